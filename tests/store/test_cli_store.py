"""``replayable export / import / verify / copy / prune`` from the command line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import replayable as rp
from replayable.cli import main
from replayable.store import open_store
from replayable.store.base import RunQuery
from replayable.trace import Run


@rp.boundary(kind="tool")
def weather(city: str) -> dict:
    return {"city": city, "temp": 21.5}


@rp.boundary(kind="agent")
def forecaster(cities: list) -> list:
    return [weather(c) for c in cities]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def run() -> Run:
    with rp.record(name="forecast") as r:
        forecaster(["Oslo", "Lima"])
    return r


@pytest.fixture
def exported(run: Run, tmp_path: Path) -> Path:
    out = tmp_path / "exports" / "forecast.jsonl"
    result = invoke("export", run.id[:12], "-o", str(out))
    assert result.exit_code == 0, result.output
    return out


def edit_byte(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))


class TestExportImport:
    def test_export_then_import_into_another_store(
        self, run: Run, exported: Path, tmp_path: Path
    ) -> None:
        """A run exported to a file and imported elsewhere keeps its events and chain."""
        other = tmp_path / "other.db"
        result = invoke("import", str(exported), "--store", str(other))
        assert result.exit_code == 0, result.output
        assert f"imported run {run.id} (3 events)" in result.output
        store = open_store(other)
        assert [e.output for e in store.iter_events(run.id)][1] == {"city": "Oslo", "temp": 21.5}
        assert invoke("verify", run.id, "--store", str(other)).exit_code == 0
        again = invoke("import", str(exported), "--store", str(other))
        assert "already in" in again.output

    def test_export_to_stdout(self, run: Run) -> None:
        """-o - writes the trace to stdout: a header line and one line per event."""
        result = invoke("export", run.id, "-o", "-")
        assert result.exit_code == 0, result.exception
        lines = result.stdout_bytes.decode().splitlines()
        assert len(lines) == 4
        assert lines[0].startswith('{"format":"replayable-trace"')

    def test_import_of_an_edited_file_imports_nothing(self, exported: Path, tmp_path: Path) -> None:
        """One edited byte: TraceCorrupt with the line, exit 2, and no run written."""
        good = tmp_path / "good.jsonl"
        good.write_bytes(exported.read_bytes())
        edit_byte(exported, b'"Lima"}', b'"Lime"}')
        other = tmp_path / "other.db"
        result = invoke("import", str(good), str(exported), "--store", str(other))
        assert result.exit_code == 2
        assert "TraceCorrupt" in result.output
        assert "line 4" in result.output
        assert "nothing imported" in result.output
        assert open_store(other).list_runs() == []

    def test_import_of_a_truncated_file_names_the_line(
        self, exported: Path, tmp_path: Path
    ) -> None:
        """A file cut mid-line reports the line and imports nothing."""
        exported.write_bytes(exported.read_bytes()[:-15])
        result = invoke("import", str(exported), "--store", str(tmp_path / "o.db"))
        assert result.exit_code == 2
        assert "line 4 is truncated" in result.output
        assert open_store(tmp_path / "o.db").list_runs() == []


class TestVerify:
    def test_intact_run_and_file(self, run: Run, exported: Path) -> None:
        """An untouched run or trace file verifies, exit 0."""
        for target in (run.id[:10], str(exported)):
            result = invoke("verify", target)
            assert result.exit_code == 0, result.output
            assert "chain intact" in result.output

    def test_edited_file_names_the_first_bad_event(self, exported: Path) -> None:
        """verify FILE exits 1 naming the event's seq, address and line."""
        edit_byte(exported, b'"Oslo"}', b'"Osla"}')
        result = invoke("verify", str(exported))
        assert result.exit_code == 1
        assert "line 3" in result.output
        assert "seq=1" in result.output
        assert "weather/0" in result.output

    def test_edited_store_row_is_caught(self, run: Run, store_path: Path) -> None:
        """An event edited in the database fails verify RUN."""
        import sqlite3

        rp.flush()  # edited behind replayable's back: its writes first
        db = sqlite3.connect(store_path)
        db.execute('UPDATE events SET output = \'{"city":"Oslo","temp":30}\' WHERE seq = 1')
        db.commit()
        db.close()
        result = invoke("verify", run.id, "--json")
        assert result.exit_code == 1
        assert '"bad_seq":1' in result.output

    def test_truncated_file_is_bad(self, exported: Path) -> None:
        """A truncated trace file is reported as TraceCorrupt with its line, exit 1."""
        exported.write_bytes(exported.read_bytes()[:-10])
        result = invoke("verify", str(exported))
        assert result.exit_code == 1
        assert "TraceCorrupt" in result.output
        assert "line 4" in result.output

    def test_signature_checked_when_key_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A run signed with one key fails verify under another."""
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", "right")
        with rp.record() as r:
            weather("Rome")
        assert "signature valid" in invoke("verify", r.id).output
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", "wrong")
        result = invoke("verify", r.id)
        assert result.exit_code == 1
        assert "signature does not match" in result.output

    def test_unknown_run_is_bad_input(self) -> None:
        """An unknown id is exit 2 with one line, no traceback."""
        rp.open_store()  # an existing, empty store
        result = invoke("verify", "nope")
        assert result.exit_code == 2
        assert "no run 'nope'" in result.output


class TestCopyAndPrune:
    def test_copy_sqlite_to_postgres_and_back(self, run: Run, pg_url: str, tmp_path: Path) -> None:
        """copy moves runs between backends, skips what is there, and chains still verify."""
        result = invoke("copy", str(open_store().url), pg_url, "--since", "1h")
        assert result.exit_code == 0, result.output
        assert "copied 1 runs (3 events)" in result.output
        assert "copied 0 runs" in invoke("copy", open_store().url, pg_url).output
        back = tmp_path / "laptop.db"
        assert "copied 1 runs" in invoke("copy", pg_url, f"sqlite:///{back}").output
        assert invoke("verify", run.id, "--store", str(back)).exit_code == 0

    def test_copy_since_filters_by_start(self, run: Run, tmp_path: Path) -> None:
        """Runs started before --since stay behind."""
        old = Run(id="old-run", started_at=time.time() - 86400 * 3, status="ok")
        open_store().put_run(old, [])
        result = invoke("copy", open_store().url, str(tmp_path / "d.db"), "--since", "2d")
        assert "copied 1 runs" in result.output
        assert [r.id for r in open_store(tmp_path / "d.db").list_runs()] == [run.id]

    def test_prune_deletes_old_runs(self, run: Run) -> None:
        """prune --older-than removes older runs only."""
        open_store().put_run(Run(id="old-run", started_at=time.time() - 86400 * 40), [])
        result = invoke("prune", "--older-than", "30d", "--yes")
        assert result.exit_code == 0
        assert "deleted 1 runs" in result.output
        assert [r.id for r in open_store().list_runs(RunQuery())] == [run.id]


class TestExportCorpus:
    def test_export_since_writes_one_trace_per_recorded_run(self, run: Run, tmp_path: Path) -> None:
        """export --since 7d -o DIR writes every recorded run (not replays) as RUN_ID.jsonl,
        a directory `check --store DIR` reads."""
        open_store().put_run(Run(id="old-run", started_at=time.time() - 86400 * 30), [])
        open_store().put_run(
            Run(id="a-replay", started_at=time.time(), parent_run=run.id, status="ok"), []
        )
        result = invoke("export", "--since", "7d", "-o", str(tmp_path / "corpus"))
        assert result.exit_code == 0, result.output
        assert "exported 1 run(s)" in result.output
        files = sorted(p.name for p in (tmp_path / "corpus").iterdir())
        assert files == [f"{run.id}.jsonl"]
        assert [r.id for r in open_store(tmp_path / "corpus").list_runs()] == [run.id]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ([], "name a RUN_ID"),
            (["--since", "7d"], "-o DIR"),
            (["RUNID", "--since", "7d"], "not both"),
        ],
    )
    def test_export_usage_errors(self, run: Run, args: list[str], message: str) -> None:
        """Neither a run nor a query, a query without -o DIR, or both: exit 2, one line."""
        result = invoke("export", *[run.id if a == "RUNID" else a for a in args])
        assert result.exit_code == 2
        assert message in result.output
