"""Size bounds: a recorded value over the cap is stored cut (its length, digest and a marker),
and a replay refuses to serve a cut output unless its boundary opts in."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import replayable as rp
from replayable import _cut, canonical
from replayable.cli import main
from replayable.store import Store
from replayable.trace import verify_run, write_trace
from replayable.viewer import create_app

CAP = 4096
BIG = "x" * 10_000

calls: list[str] = []


@rp.boundary(kind="tool", name="cut:fetch")
def fetch(page: str) -> str:
    calls.append(page)
    return BIG + page


@rp.boundary(kind="tool", name="cut:fetch_marker", serve_cut=True)
def fetch_marker(page: str) -> Any:
    calls.append(page)
    return BIG + page


@rp.boundary(kind="tool", name="cut:upload")
def upload(blob: str) -> int:
    calls.append("upload")
    return len(blob)


@rp.boundary(kind="llm", name="cut:complete")
def complete(prompt: str) -> str:
    return f"echo {len(prompt)}"


def stored_event(run: rp.Run, seq: int = 0) -> rp.Event:
    """The event as a fresh read of the store has it."""
    rp.flush()
    return next(e for e in rp.open_store().get_run(run.id).events() if e.seq == seq)


@pytest.fixture(autouse=True)
def _no_calls() -> None:
    calls.clear()


class TestRecordCut:
    """A value over the cap is stored as a marker holding its length, digest and start."""

    def test_an_output_over_the_cap_is_stored_cut_with_its_length_and_digest(self) -> None:
        """The output's JSON over the cap becomes {"$cut": {bytes, sha256, preview}}, and the
        event's metadata lists it as cut; the input under the cap is kept whole."""
        with rp.record(max_value_bytes=CAP) as run:
            assert fetch("p1") == BIG + "p1"
        ev = stored_event(run)
        full = orjson.dumps(BIG + "p1")
        assert ev.output == {
            "$cut": {
                "bytes": len(full),
                "sha256": hashlib.sha256(full).hexdigest(),
                "preview": full.decode()[: _cut.PREVIEW_CHARS],
            }
        }
        assert ev.meta["cut"] == ["output"]
        assert ev.input == {"page": "p1"}
        stored = rp.open_store().get_run(run.id)
        assert verify_run(stored, stored.events()).ok

    def test_a_value_under_the_cap_is_stored_whole(self) -> None:
        """At the default cap (1 MiB) a 10 KB output is kept as it was."""
        with rp.record() as run:
            fetch("p1")
        ev = stored_event(run)
        assert ev.output == BIG + "p1"
        assert "cut" not in ev.meta

    def test_the_default_cap_is_one_mebibyte(self) -> None:
        """A value whose JSON is just over 1 MiB is cut by default; one just under is not."""
        limit = _cut.DEFAULT_MAX_VALUE_BYTES
        assert limit == 1 << 20
        with rp.record() as run:
            upload("y" * (limit - 11))  # its JSON, {"blob":"yy…"}, is exactly the cap
            upload("y" * (limit - 10))  # one byte over
        first, second = stored_event(run, 0), stored_event(run, 1)
        assert first.input == {"blob": "y" * (limit - 11)}
        assert "cut" not in first.meta
        assert second.meta["cut"] == ["input"]
        assert second.input["$cut"]["bytes"] == limit + 1

    def test_the_environment_sets_the_cap(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """$REPLAYABLE_MAX_VALUE_BYTES is the cap when record() names none."""
        monkeypatch.setenv(_cut.MAX_VALUE_ENV, str(CAP))
        with rp.record() as run:
            fetch("p1")
        assert stored_event(run).meta["cut"] == ["output"]

    @pytest.mark.parametrize("bad", ["lots", "12", "-5", "1.5"])
    def test_a_bad_cap_in_the_environment_is_refused_naming_it(
        self, bad: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A cap that is not a whole number of bytes, 1024 or more, is refused before the run,
        the message naming the variable."""
        monkeypatch.setenv(_cut.MAX_VALUE_ENV, bad)
        with pytest.raises(ValueError, match=r"\$REPLAYABLE_MAX_VALUE_BYTES"):
            rp.record()

    @pytest.mark.parametrize("bad", [0, 100, True, 2.5])
    def test_a_bad_cap_argument_is_refused(self, bad: Any) -> None:
        """max_value_bytes= below 1024 or not an int is refused with what it must be."""
        with pytest.raises(ValueError, match=r"max_value_bytes=.*1024 or more"):
            rp.record(max_value_bytes=bad)

    def test_a_cut_input_keeps_the_whole_inputs_key(self) -> None:
        """The key is computed over the whole input before it is cut, so two different inputs
        over the cap never share a key."""
        a, b = "a" * 10_000, "a" * 9_999 + "b"
        with rp.record(max_value_bytes=CAP) as run:
            upload(a)
            upload(b)
        first, second = stored_event(run, 0), stored_event(run, 1)
        assert first.meta["cut"] == second.meta["cut"] == ["input"]
        assert first.key == canonical.key({"blob": a})
        assert first.key != second.key

    def test_the_preview_holds_no_secret(self, tmp_path: Path) -> None:
        """The marker's preview is cut from the redacted value: a secret at its start is not
        in the store."""
        secret = "sk-" + "Z" * 40
        with rp.record(max_value_bytes=CAP) as run:
            upload(f"key {secret} " + BIG)
        ev = stored_event(run)
        assert ev.meta["cut"] == ["input"]
        assert "sk-[REDACTED]" in ev.input["$cut"]["preview"]
        for file in tmp_path.glob("traces.db*"):  # the database, its WAL
            assert secret.encode() not in file.read_bytes()


class TestServeCut:
    """A replay never serves a value the recording does not hold, unless asked to."""

    def test_a_cut_output_is_refused_with_what_to_do(self) -> None:
        """Serving a cut output raises CutValue naming the step, the run and the size, and
        saying how to go on; the boundary's function is not called."""
        with rp.record(max_value_bytes=CAP) as run:
            fetch("p1")
        calls.clear()
        with pytest.raises(rp.CutValue) as info, rp.replay(run.id):
            fetch("p1")
        err = info.value
        assert calls == []
        assert (err.boundary, err.address, err.run_id) == ("cut:fetch", "cut:fetch/0", run.id)
        assert err.size == len(orjson.dumps(BIG + "p1"))
        message = str(err)
        for says in (run.id, "cut:fetch/0", "live=", "serve_cut=True", "max_value_bytes"):
            assert says in message
        assert isinstance(err, rp.ReplayableError)

    def test_a_boundary_that_opts_in_gets_the_marker(self) -> None:
        """serve_cut=True serves the marker as the output, and the replay's own step says it
        was cut, so a replay of the replay is refused for a boundary that does not opt in."""
        with rp.record(max_value_bytes=CAP) as run:
            fetch_marker("p1")
        calls.clear()
        with rp.replay(run.id) as replay:
            served = fetch_marker("p1")
        assert calls == []
        assert replay.ok
        assert served == stored_event(run).output
        assert _cut.info(served) is not None
        assert stored_event(replay.run).meta["cut"] == ["output"]

    def test_a_cut_output_named_live_runs(self) -> None:
        """Naming the boundary in live= runs it instead of serving it."""
        with rp.record(max_value_bytes=CAP) as run:
            fetch("p1")
        with rp.replay(run.id, live=["fetch"]) as replay:
            assert fetch("p1") == BIG + "p1"
        assert replay.ok
        assert calls == ["p1", "p1"]

    def test_a_cut_input_still_matches_and_serves(self) -> None:
        """A call whose input was cut matches by key (its bytes are gone) and is served."""
        blob = "q" * 10_000
        with rp.record(max_value_bytes=CAP) as run:
            assert upload(blob) == 10_000
        calls.clear()
        with rp.replay(run.id) as replay:
            assert upload(blob) == 10_000
        assert replay.ok
        assert calls == []

    def test_a_trace_file_refuses_a_cut_output_too(self, tmp_path: Path) -> None:
        """A run exported to a trace file keeps the marker and its metadata; replaying the file
        refuses the cut output the same way."""
        with rp.record(max_value_bytes=CAP) as run:
            fetch("p1")
        stored = rp.open_store().get_run(run.id)
        path = write_trace(stored, stored.events(), tmp_path / "run.jsonl")
        with pytest.raises(rp.CutValue), rp.replay(path):
            fetch("p1")
        assert calls == ["p1"]

    def test_a_value_that_only_looks_like_a_marker_is_served(self) -> None:
        """A recorded output shaped like the marker but not cut (no metadata says so) is data,
        served as it was."""
        looks = {"$cut": {"bytes": 5, "sha256": "0" * 64, "preview": "hello"}}

        @rp.boundary(kind="tool", name="cut:looks")
        def looks_like() -> dict[str, Any]:
            return looks

        with rp.record(max_value_bytes=CAP) as run:
            looks_like()
        with rp.replay(run.id) as replay:
            assert looks_like() == looks
        assert replay.ok


class TestShowingCut:
    """People see a cut value as cut, with its size, wherever they look."""

    def test_show_labels_a_cut_output(self) -> None:
        """`replayable show RUN --step 0` heads the output as cut with its byte count."""
        with rp.record(max_value_bytes=CAP) as run:
            fetch("p1")
        rp.flush()
        result = CliRunner().invoke(main, ["show", run.id, "--step", "0"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        size = len(orjson.dumps(BIG + "p1"))
        assert f"output (cut at record time: {size:,} bytes" in result.output

    def test_the_viewer_step_page_says_the_value_was_cut(self, store_path: Path) -> None:
        """The step page says the output is over the size cap and was cut."""
        store: Store = rp.open_store(store_path)
        with rp.record(store, max_value_bytes=CAP) as run:
            fetch("p1")
        client = TestClient(create_app(store), base_url="http://127.0.0.1")
        html = client.get(f"/runs/{run.id}/steps/0").text
        assert 'class="cut-value"' in html
        assert "over the recording&#39;s size cap" in html or "size cap" in html

    def test_drift_does_not_rerun_a_cut_input(self) -> None:
        """drift reports a model call whose input was cut as not re-run, saying why."""
        with rp.record(max_value_bytes=CAP) as run:
            complete("p" * 10_000)
        rp.flush()
        report = rp.drift(run.id)
        [step] = report.steps
        assert step.status == "not_rerun"
        assert "input was cut at record time" in (step.reason or "")
