"""Hostile or odd input to the CLI: recorded text is printed as text, bad arguments and bad
trace files give one line and exit 2 (verify: a BAD line and exit 1), never a traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from tests.fixtures.hostile import RAW_TERMINAL, TERMINAL

import replayable as rp
from replayable.cli import main
from replayable.trace import Event, Run, chain_events, verify_trace, write_trace

HOSTILE = TERMINAL


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def agent_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable agent module whose tool returns hostile text."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "hostile_agent.py").write_text(
        "import os\n\nimport replayable as rp\n\n"
        "@rp.boundary(kind='tool')\n"
        "def fetch(q: str) -> dict:\n"
        "    return {'text': q}\n\n"
        "@rp.boundary(kind='agent')\n"
        "def agent(q: str) -> dict:\n"
        "    return fetch(q + os.environ.get('HOSTILE_SUFFIX', ''))\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(code))
    return "hostile_agent"


@pytest.fixture
def hostile_run(agent_module: str) -> rp.Run:
    """A run whose name, tags and recorded values hold markup and terminal escapes."""
    import importlib

    mod = importlib.import_module(agent_module)
    with rp.record(name=HOSTILE, tags={"t": HOSTILE}) as run:
        mod.agent(HOSTILE)
    return run


class TestRecordedTextIsText:
    @pytest.mark.parametrize(
        "args",
        [
            ("show", "{id}"),
            ("show", "{id}", "--step", "1"),
            ("runs",),
            ("stats",),
            ("replay", "{id}", "--import", "hostile_agent"),
            ("diff", "{id}", "{id}"),
        ],
        ids=lambda a: a[0] + ("-step" if "--step" in a else ""),
    )
    def test_no_markup_error_and_no_escape_sequence_reaches_the_terminal(
        self, hostile_run: rp.Run, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Recorded `[/bold]` prints as itself; ESC, BEL and bidi overrides are shown escaped."""
        monkeypatch.setenv("HOSTILE_SUFFIX", " [/italic] \x1b[31m")  # replay: a divergence
        result = invoke(*(a.format(id=hostile_run.id) for a in args))
        assert result.exit_code in (0, 1), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        for raw in RAW_TERMINAL:
            assert raw not in result.output
        if args[0] in ("show", "replay"):
            assert "[/bold]" in result.output or "\\x1b" in result.output


def _trace(tmp_path: Path, **header_run: Any) -> Path:
    """A valid one-event trace file whose header's run fields are then overridden."""
    run = Run(id="0190abcdef12", name="n", started_at=1.0, ended_at=2.0, status="ok")
    ev = Event(run.id, 0, "m:f/0", None, "m:f", "tool", "k", {"a": 1}, {"b": 2})
    chain_events(run, [ev])
    path = write_trace(run, [ev], tmp_path / "t.jsonl")
    if header_run:
        head, rest = path.read_bytes().split(b"\n", 1)
        header = orjson.loads(head)
        for k, v in header_run.items():
            if v is ...:
                del header["run"][k]
            else:
                header["run"][k] = v
        path.write_bytes(orjson.dumps(header) + b"\n" + rest)
    return path


HEADERS = {
    "id missing": {"id": ...},
    "id not a string": {"id": 7},
    "id a path": {"id": "../../x"},
    "tags not an object": {"tags": ["a"]},
    "tag value not a string": {"tags": {"a": 1}},
    "started_at a string": {"started_at": "yesterday"},
    "event_count a float": {"event_count": 1.5},
    "status null-ish list": {"status": []},
}


class TestHostileTraceFiles:
    @pytest.mark.parametrize("fields", list(HEADERS.values()), ids=list(HEADERS))
    @pytest.mark.parametrize("command", ["show", "import", "verify", "promote"])
    def test_bad_header_is_one_line(self, tmp_path: Path, fields: dict, command: str) -> None:
        """A header with missing or mistyped fields: one line naming line 1; exit 2 (verify:
        BAD and exit 1); nothing imported."""
        path = _trace(tmp_path, **fields)
        result = invoke(command, str(path))
        assert result.exit_code == (1 if command == "verify" else 2), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output
        assert "line 1" in result.output
        assert len(result.output.strip().splitlines()) == 1

    @pytest.mark.parametrize(
        "line",
        [
            b'{"meta": "not an object"}',
            b"[1, 2]",
            b"not json",
            b'{"run_id": "0190abcdef12", "seq": "0", "address": "a", "boundary": "b", "kind": "k"}',
        ],
    )
    def test_bad_event_line_names_its_line(self, tmp_path: Path, line: bytes) -> None:
        """An event line that is not an event object: one line naming line 2, exit 2."""
        path = _trace(tmp_path)
        head = path.read_bytes().split(b"\n", 1)[0]
        path.write_bytes(head + b"\n" + line + b"\n")
        result = invoke("show", str(path))
        assert result.exit_code == 2
        assert "line 2" in result.output
        assert len(result.output.strip().splitlines()) == 1

    def test_import_refuses_a_run_id_that_is_a_path(self, tmp_path: Path) -> None:
        """`import` of a file whose run id is `../../x`: exit 2 and nothing written."""
        path = _trace(tmp_path, id="../../x")
        result = invoke("import", str(path), "--store", str(tmp_path / "s.db"))
        assert result.exit_code == 2
        assert "invalid run id" in result.output

    def test_verify_streams_a_large_file(self, tmp_path: Path) -> None:
        """verify reads a trace file line by line: its peak memory is a small fraction of the
        file's size."""
        run = Run(id="0190abcdef13", name="big", started_at=1.0, ended_at=2.0, status="ok")
        blob = "x" * 20_000
        events = [
            Event(run.id, i, f"m:f/{i}", None, "m:f", "tool", "k", {"i": i}, {"blob": blob})
            for i in range(1000)
        ]
        chain_events(run, events)
        path = write_trace(run, events, tmp_path / "big.jsonl")
        del events
        size = path.stat().st_size
        tracemalloc.start()
        try:
            assert verify_trace(path, key=b"").ok
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert size > 20_000_000
        assert peak < size / 10


def _peak_rss_mb(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI in a child process; its output and its peak resident memory in MB (the
    child's own: VmHWM of its memory map; ``ru_maxrss`` would carry over the forking pytest
    worker's peak across exec, which a worker that loaded torch puts near 900 MB)."""
    code = (
        "import re, sys\n"
        "from pathlib import Path\n"
        "from replayable.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:], standalone_mode=True)\n"
        "finally:\n"
        "    status = Path('/proc/self/status').read_text()\n"
        "    print(re.search(r'VmHWM:\\s*(\\d+) kB', status).group(1), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    *lines, peak = proc.stderr.strip().splitlines()
    proc.stderr = "\n".join(lines)
    return proc, int(peak) / 1024


class TestOverlongLines:
    """A file whose first line never ends (a 1 GB sparse file) is refused after a bounded read."""

    @pytest.fixture
    def endless(self, tmp_path: Path) -> Path:
        path = tmp_path / "traces" / "endless.jsonl"
        path.parent.mkdir()
        with path.open("wb") as fh:
            fh.truncate(1024**3)  # sparse: no disk, one line of NUL bytes with no newline
        return path

    def test_verify_refuses_an_endless_line_in_bounded_memory(self, endless: Path) -> None:
        """`verify FILE` on it: one BAD line naming line 1 and the limit, exit 1, and the
        process never holds more than a few hundred MB (it held 2.1 GB reading the line)."""
        proc, peak_mb = _peak_rss_mb("verify", str(endless))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        out = (proc.stdout + proc.stderr).strip()
        assert len(out.splitlines()) == 1
        assert "line 1 is longer than 64 MiB" in out
        assert "Traceback" not in out
        assert peak_mb < 400

    def test_runs_in_a_directory_skips_it_in_bounded_memory(self, endless: Path) -> None:
        """`runs --store DIR` with that file among the traces: one line saying it was skipped
        and why, the other runs still listed, bounded memory."""
        good = _trace(endless.parent)
        proc, peak_mb = _peak_rss_mb("runs", "--store", str(endless.parent))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"skipped {endless}: line 1 is longer than 64 MiB (a trace line holds one event): "
            "not a trace file, or a damaged one"
        ]
        assert rp.trace.read_trace_header(good).id[:8] in proc.stdout
        assert peak_mb < 400

    def test_a_line_just_under_the_limit_still_reads(self, tmp_path: Path) -> None:
        """The bound refuses only what is over it: an event line of 60 MiB is read as usual."""
        path = _trace(tmp_path)
        run = rp.trace.read_trace_header(path)
        ev = Event(run.id, 0, "m:f/0", None, "m:f", "tool", "k", {}, {"blob": "x" * (60 << 20)})
        chain_events(run, [ev])
        big = write_trace(run, [ev], tmp_path / "big.jsonl")
        assert verify_trace(big, key=b"").ok


class TestBadArguments:
    def test_non_utf8_run_id_is_one_line(self) -> None:
        """A run id that is not UTF-8 (surrogate-escaped by Python): one line, exit 2."""
        for command in ("show", "export", "verify", "replay"):
            args = [command, "\udcff\udcfe"] + (["--import", "os"] if command == "replay" else [])
            result = invoke(*args)
            assert result.exit_code == 2, (command, result.output)
            assert "not valid UTF-8" in result.output

    @pytest.mark.parametrize(
        ("args", "option"),
        [
            (["runs", "--since", "lately"], "--since"),
            (["stats", "--since", "lately"], "--since"),
            (["check", "--import", "os", "--since", "lately"], "--since"),
            (["drift", "--import", "os", "--since", "lately"], "--since"),
            (["export", "--since", "lately", "-o", "corpus"], "--since"),
            (["prune", "--older-than", "lately", "--yes"], "--older-than"),
        ],
    )
    def test_a_bad_period_names_its_option(
        self, hostile_run: rp.Run, args: list[str], option: str
    ) -> None:
        """A period that is neither a duration nor a date: the option named, exit 2."""
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert f"Invalid value for {option}: 'lately': use a duration like 1h" in result.output
        assert "Traceback" not in result.output

    @pytest.mark.parametrize(
        ("args", "problem"),
        [
            (["runs", "--since", "lately"], "--since"),
            (["runs", "--tag", "novalue"], "--tag"),
            (["stats", "--since", "lately"], "--since"),
            (["check", "--import", "os", "--since", "lately"], "--since"),
            (["check", "--import", "os", "--tag", "novalue"], "--tag"),
            (["drift", "--import", "os", "--since", "lately"], "--since"),
            (["export", "--since", "lately", "-o", "corpus"], "--since"),
            (["export", "--tag", "novalue", "-o", "corpus"], "--tag"),
            (["export", "RUN", "--since", "1d"], "give either RUN_ID or --since"),
            (["export", "--name", "x", "-o", "-"], "-o DIR"),
            (["prune", "--older-than", "lately", "--yes"], "--older-than"),
            (["promote", "RUN", "--world", "m:w"], "--world is for the tools that run live"),
        ],
    )
    def test_bad_options_are_named_before_the_store_is_opened(
        self, tmp_path: Path, args: list[str], problem: str
    ) -> None:
        """A bad option and a store that does not exist: the option is named (not the store),
        exit 2, and no store is created."""
        store = tmp_path / "missing.db"
        result = invoke(*args, "--store", str(store))
        assert result.exit_code == 2, result.output
        assert problem in result.output
        assert "no store" not in result.output
        assert not store.exists()

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["runs", "--since", "lately"], "Invalid value for --since: 'lately'"),
            (["check", "--since", "1d"], "Missing option '--import'"),
            (["fork"], "Missing argument 'RUN_ID'"),
            (["runs", "--bogus"], "No such option '--bogus'"),
            (["no-such-command"], "No such command 'no-such-command'"),
            (["check", "--import", "os", "--seed", "2"], "--seed goes with --sample N"),
        ],
    )
    def test_usage_errors_are_one_line_naming_the_help(self, args: list[str], message: str) -> None:
        """A usage error is one 'error:' line naming the problem and the command's --help,
        exit 2 (not click's usage block)."""
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {message}")
        assert result.output.rstrip().endswith("--help`)")
        assert result.output.count("\n") == 1

    def test_serve_port_out_of_range(self) -> None:
        """`serve --port 99999`: a usage error, exit 2."""
        result = invoke("serve", "--port", "99999")
        assert result.exit_code == 2
        assert "99999" in result.output

    def test_export_under_a_file_is_one_line(self, hostile_run: rp.Run, tmp_path: Path) -> None:
        """`export -o a-file/sub/x.jsonl`: one line, exit 2."""
        (tmp_path / "a-file").write_text("")
        result = invoke(
            "export", hostile_run.id, "-o", str(tmp_path / "a-file" / "sub" / "x.jsonl")
        )
        assert result.exit_code == 2
        assert result.output.startswith("error: cannot write trace file")

    def test_export_keeps_dev_null_and_a_fifo_what_they_are(
        self, hostile_run: rp.Run, tmp_path: Path
    ) -> None:
        """`export -o /dev/null` and `-o FIFO` write in place: neither becomes a regular file."""
        assert invoke("export", hostile_run.id, "-o", os.devnull).exit_code == 0
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
        reader.start()
        assert invoke("export", hostile_run.id, "-o", str(fifo)).exit_code == 0
        reader.join(10)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert got
        assert got[0].startswith(b'{"format":"replayable-trace"')
