"""``rp.check``: many recorded runs replayed against the code as it is now, sorted and kept."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.check_corpus import URGENT, Corpus, record_corpus

import replayable as rp
from replayable._check import CheckReport, list_checks, load_check
from replayable.store import open_store
from replayable.store.base import RunQuery, verify_stored
from replayable.trace import write_trace


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Corpus]:
    """30 recorded runs of the sampling support agent, in the test's SQLite store."""
    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    return record_corpus(open_store(tmp_path / "traces.db"), code)


def _outcomes(report: CheckReport) -> list[tuple[str, str, str | None]]:
    return [(o.run_id, o.outcome, o.signature) for o in report.outcomes]


class TestSorting:
    def test_unchanged_code_leaves_every_run_unchanged(self, corpus: Corpus) -> None:
        """Against the code that recorded them, every run takes the recorded path."""
        report = rp.check(corpus.store, imports=[corpus.name])
        assert report.counts == {
            "unchanged": 30,
            "diverged": 0,
            "failed": 0,
            "not_replayable": 0,
        }
        assert report.ok
        assert report.groups == []

    def test_a_change_on_some_inputs_diverges_exactly_those_runs_in_one_group(
        self, corpus: Corpus
    ) -> None:
        """Capping refunds at 100 diverges exactly the runs that refunded more, in one group
        whose signature is issue_refund, changed, [amount]; every other run is unchanged."""
        expected = corpus.refunds_over(100)
        assert expected, "the sampled corpus has refunds over 100"
        corpus.change()
        report = rp.check(corpus.store, imports=[corpus.name])
        diverged = {o.run_id for o in report.runs("diverged")}
        assert diverged == expected
        assert {o.run_id for o in report.runs("unchanged")} == {
            r.id for r in corpus.runs
        } - expected
        assert not report.ok
        [group] = report.groups
        assert group.boundary == f"{corpus.name}:issue_refund"
        assert group.reason == "changed"
        assert group.fields == ("amount",)
        assert group.signature == f"changed {corpus.name}:issue_refund [amount]"
        assert group.count == len(expected)
        assert {r for r, _ in group.examples} <= expected
        assert 0 < len(group.examples) <= 5

    def test_groups_are_largest_first(self, corpus: Corpus) -> None:
        """Two kinds of change give two groups with the right members, the bigger one first."""
        over = corpus.refunds_over(100)
        small = corpus.refunds_over(0) - corpus.refunds_over(90)  # totals under 100
        assert over
        assert small
        corpus.change(
            "amount = min(amount, 100)\n"
            '    if order["total"] < 100:\n'
            "        lookup_order(order_id)"
        )
        report = rp.check(corpus.store, imports=[corpus.name])
        members = {
            g.signature: {o.run_id for o in report.runs("diverged") if o.signature == g.signature}
            for g in report.groups
        }
        assert members == {
            f"changed {corpus.name}:issue_refund [amount]": over,
            f"unexpected {corpus.name}:lookup_order": small,
        }
        assert [g.count for g in report.groups] == sorted([len(over), len(small)], reverse=True)

    def test_a_raise_where_the_recording_did_not_is_failed(self, corpus: Corpus) -> None:
        """Urgent tickets now raise: exactly those runs are failed, with the error named."""
        corpus.change(URGENT, where="# FIRST")
        report = rp.check(corpus.store, imports=[corpus.name])
        urgent = {r.id for r in corpus.runs if "urgent" in corpus.recorded(r)[0].input["ticket"]}
        assert {o.run_id for o in report.runs("failed")} == urgent
        for o in report.runs("failed"):
            assert o.signature == "builtins:RuntimeError"
            assert "no handler for urgent tickets" in o.detail
        assert report.counts["unchanged"] == 30 - len(urgent)
        assert not report.ok


class TestNotReplayable:
    def test_an_edited_event_is_not_replayable_and_the_check_goes_on(
        self, corpus: Corpus, tmp_path: Path
    ) -> None:
        """A run whose stored event was edited is reported as a damaged trace; the others
        are checked as usual."""
        victim = corpus.runs[3]
        with sqlite3.connect(tmp_path / "traces.db") as db:
            db.execute(
                "UPDATE events SET output = ? WHERE run_id = ? AND seq = 1",
                ('{"label": "question", "score": 0.9}', victim.id),
            )
        report = rp.check(corpus.store, imports=[corpus.name])
        [bad] = report.runs("not_replayable")
        assert bad.run_id == victim.id
        assert bad.detail.startswith("damaged trace:")
        assert report.counts["unchanged"] == 29
        assert report.ok  # not replayable runs are reported, not failed

    def test_a_cut_tail_is_not_replayable(self, corpus: Corpus, tmp_path: Path) -> None:
        """A run whose last events are gone (the head hash no longer matches) is damaged."""
        victim = corpus.runs[5]
        with sqlite3.connect(tmp_path / "traces.db") as db:
            db.execute(
                "DELETE FROM events WHERE run_id = ? AND chain_seq = "
                "(SELECT MAX(chain_seq) FROM events WHERE run_id = ?)",
                (victim.id, victim.id),
            )
        report = rp.check(corpus.store, imports=[corpus.name], save=False)
        [bad] = report.runs("not_replayable")
        assert bad.run_id == victim.id
        assert "head hash or event count" in bad.detail

    def test_another_major_version_is_not_replayable(self, corpus: Corpus, tmp_path: Path) -> None:
        """A trace recorded by another major version of replayable is listed with the reason."""
        import orjson

        corpus_dir = tmp_path / "corpus"
        run = corpus.runs[0]
        path = write_trace(run, corpus.recorded(run), corpus_dir / "old.jsonl")
        head, rest = path.read_bytes().split(b"\n", 1)
        header = orjson.loads(head)
        header["run"]["environment"]["replayable"] = "9.0.0"
        path.write_bytes(orjson.dumps(header) + b"\n" + rest)
        report = rp.check(corpus_dir, imports=[corpus.name], save=False)
        [bad] = report.runs("not_replayable")
        assert bad.detail.startswith("incompatible version:")
        assert "9.0.0" in bad.detail

    def test_a_damaged_trace_file_in_a_corpus_directory(
        self, corpus: Corpus, tmp_path: Path
    ) -> None:
        """In a directory of trace files, a file with a broken event line is not replayable;
        every other file is checked, and the check is kept in the default store."""
        corpus_dir = tmp_path / "corpus"
        for run in corpus.runs[:6]:
            write_trace(run, corpus.recorded(run), corpus_dir / f"{run.id}.jsonl")
        broken = corpus_dir / f"{corpus.runs[2].id}.jsonl"
        lines = broken.read_text(encoding="utf-8").splitlines(keepends=True)
        broken.write_text(lines[0] + lines[1] + "{not json\n", encoding="utf-8")
        headless = corpus_dir / "sub" / "cut.jsonl"
        headless.parent.mkdir()
        headless.write_text('{"format": "replayable-tr\n', encoding="utf-8")
        report = rp.check(corpus_dir, imports=[corpus.name])
        bad, cut = report.runs("not_replayable")
        assert bad.run_id == corpus.runs[2].id
        assert "line 3 is not a valid event" in bad.detail
        assert cut.run_id == str(headless)
        assert "line 1 (header) is not valid JSON" in cut.detail
        assert report.counts["unchanged"] == 5
        assert report.saved_to == open_store(None).url

    def test_an_unregistered_root_boundary_is_not_replayable(self, corpus: Corpus) -> None:
        """Checking without importing the agent's module says which boundary is missing."""
        from replayable.boundary import _REGISTRY

        for name in [n for n in _REGISTRY if n.startswith(corpus.name + ":")]:
            del _REGISTRY[name]
        report = rp.check(corpus.store, imports=[])
        assert report.counts["not_replayable"] == 30
        assert "is not registered" in report.outcomes[0].detail


class TestKept:
    def test_the_check_is_kept_with_its_groups_and_every_runs_outcome(self, corpus: Corpus) -> None:
        """load_check gives back the same outcomes and groups; list_checks lists it first."""
        corpus.change()
        report = rp.check(corpus.store, imports=[corpus.name])
        again = load_check(report.id[:14], corpus.store)
        assert _outcomes(again) == _outcomes(report)
        assert again.groups == report.groups
        assert again.counts == report.counts
        [listed] = list_checks(corpus.store)
        assert listed.id == report.id
        assert listed.counts == report.counts
        assert listed.outcomes == []

    def test_only_diverged_runs_keep_their_replay(self, corpus: Corpus) -> None:
        """Unchanged runs leave nothing behind; each diverged run's replay is in the store,
        linked to its source, and diffs against it at issue_refund."""
        from replayable._rundiff import diff_runs

        corpus.change()
        report = rp.check(corpus.store, imports=[corpus.name])
        replays = [r for r in corpus.store.list_runs(RunQuery(limit=1000)) if r.parent_run]
        diverged = report.runs("diverged")
        assert {r.id for r in replays} == {o.replay_id for o in diverged}
        o = diverged[0]
        replay = corpus.store.get_run(str(o.replay_id))
        assert replay.parent_run == o.run_id
        assert replay.status == "diverged"
        source = corpus.store.get_run(o.run_id)
        d = diff_runs(
            source, corpus.recorded(source), replay, list(corpus.store.iter_events(replay.id))
        )
        assert d.first_divergence is not None
        assert d.first_divergence.boundary.endswith(":issue_refund")
        from replayable.trace import verify_run

        kept = corpus.store.get_run(replay.id)
        assert verify_run(kept, corpus.store.iter_events(replay.id)).ok

    def test_save_false_keeps_nothing(self, corpus: Corpus) -> None:
        """save=False writes neither the check nor any replay."""
        corpus.change()
        report = rp.check(corpus.store, imports=[corpus.name], save=False)
        assert report.saved_to is None
        assert list_checks(corpus.store) == []
        assert not [r for r in corpus.store.list_runs(RunQuery(limit=1000)) if r.parent_run]


class TestSelection:
    def test_sample_with_a_seed_is_repeatable(self, corpus: Corpus) -> None:
        """sample=N checks N runs; the same seed picks the same ones."""
        a = rp.check(corpus.store, imports=[corpus.name], sample=7, seed=3, save=False)
        b = rp.check(corpus.store, imports=[corpus.name], sample=7, seed=3, save=False)
        assert len(a.outcomes) == 7
        assert [o.run_id for o in a.outcomes] == [o.run_id for o in b.outcomes]

    def test_filters_and_limit(self, corpus: Corpus, tmp_path: Path) -> None:
        """name, tags and limit narrow the selection; replays are never selected."""
        more = record_corpus(corpus.store, corpus.directory, n=3, tags={"env": "staging"})
        staging = rp.check(corpus.store, imports=[more.name], tags={"env": "staging"}, save=False)
        assert {o.run_id for o in staging.outcomes} == {r.id for r in more.runs}
        newest = rp.check(corpus.store, imports=[corpus.name], limit=4, save=False)
        assert [o.run_id for o in newest.outcomes] == [r.id for r in more.runs[::-1]] + [
            corpus.runs[-1].id
        ]
        assert rp.check(corpus.store, name="nope", save=False).outcomes == []

    def test_a_live_model_runs_its_code_with_recorded_randomness(self, corpus: Corpus) -> None:
        """live=["classify"] runs the model's code again; its rp.random() is served from the
        recording, so it samples the same label and every run stays unchanged."""
        report = rp.check(corpus.store, imports=[corpus.name], live=["classify"], save=False)
        assert report.counts["unchanged"] == 30

    def test_a_side_effect_named_live_is_refused_before_anything_runs(self, corpus: Corpus) -> None:
        """live=["issue_refund"] raises SideEffectRefused; nothing is checked or kept."""
        corpus.module.REFUNDS.clear()  # the refunds recording made
        with pytest.raises(rp.SideEffectRefused, match="issue_refund has side effects"):
            rp.check(corpus.store, imports=[corpus.name], live=["issue_refund"])
        assert list_checks(corpus.store) == []
        assert corpus.module.REFUNDS == []

    def test_bad_arguments_are_refused(self, corpus: Corpus) -> None:
        """jobs < 1, an unknown executor, dask without an address: ValueError at once."""
        with pytest.raises(ValueError, match="jobs"):
            rp.check(corpus.store, jobs=0)
        with pytest.raises(ValueError, match="executor"):
            rp.check(corpus.store, executor="ray")
        with pytest.raises(ValueError, match="address"):
            rp.check(corpus.store, executor="dask")

    def test_an_unknown_status_is_refused_not_an_empty_green_check(self, corpus: Corpus) -> None:
        """status="finished" (no run has it) raises ValueError naming the statuses, where it
        used to select nothing and pass."""
        with pytest.raises(ValueError, match="status 'finished': use one of running, ok"):
            rp.check(corpus.store, status="finished")  # type: ignore[arg-type]
        assert list_checks(corpus.store) == []


class TestParallel:
    def test_two_worker_processes_give_the_same_result_as_one(self, corpus: Corpus) -> None:
        """jobs=2 sorts and groups every run exactly as jobs=1 does."""
        corpus.change()
        one = rp.check(corpus.store, imports=[corpus.name], save=False)
        two = rp.check(corpus.store, imports=[corpus.name], jobs=2, save=False)
        assert _outcomes(two) == _outcomes(one)
        assert [(g.signature, g.count) for g in two.groups] == [
            (g.signature, g.count) for g in one.groups
        ]


# -- kept replays stored as references to their source -----------------------------------------

CHANGED = "TEST_CHECK_RANGES_CHANGED"
"""Set in the environment (which worker processes inherit), the agent scores twice: every
second score diverges (and the replay goes on: the tool runs live)."""
SCORE = "check_ranges:score"


@rp.boundary(name="check_ranges:ask", kind="llm")
def _ask(i: int) -> str:
    """A model call with a 1 KB answer."""
    return f"answer {i} " + "x" * 1000


@rp.boundary(name=SCORE, kind="tool")
def _score(i: int) -> int:
    """A tool a check runs live."""
    return i


@rp.boundary(name="check_ranges:agent", kind="agent")
def long_agent(n: int) -> int:
    """n model calls, every 100th scored by the tool."""
    for i in range(n):
        _ask(i)
        if i % 100 == 50:
            _score(i)
            if os.environ.get(CHANGED):  # the changed code scores twice
                _score(-i)
    return n


def _rows(path: Path, run_id: str) -> int:
    """How many rows the run has in the database (read behind the store's back)."""
    rp.flush()
    db = sqlite3.connect(path)
    try:
        return int(
            db.execute("SELECT count(*) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
        )
    finally:
        db.close()


def _seen(store: rp.Store, run_id: str) -> list[tuple[Any, ...]]:
    """What a reader sees of each step of a run, but its run id, timing and hash."""
    return [
        (
            e.seq,
            e.chain_seq,
            e.address,
            e.parent_seq,
            e.boundary,
            e.kind,
            e.key,
            e.input,
            e.output,
            e.error,
            e.meta,
        )
        for e in store.iter_events(run_id)
    ]


class TestKeptAsRanges:
    """A kept replay of a run in the store it is kept in stores what changed (range rows, as
    ``rp.replay`` does); kept anywhere else, or of a trace file, it is stored in full."""

    STEPS = 1000

    @pytest.fixture
    def long_run(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, rp.Run]:
        """A run of 1,000 model calls and 10 scores in an SQLite store; the code then changed
        to score twice (19 divergences)."""
        path = tmp_path / "traces.db"
        with rp.record(store=open_store(path), name="long") as run:
            long_agent(self.STEPS)
        monkeypatch.setenv(CHANGED, "1")
        return path, run

    def check(self, source: Any, save_to: Any = None, jobs: int = 1) -> tuple[rp.Store, rp.Run]:
        """Check ``source`` (its kept replays saved to ``save_to``): the kept replay."""
        report = rp.check(source, imports=[__name__], live=[SCORE], save_to=save_to, jobs=jobs)
        [diverged] = report.runs("diverged")
        assert "(+18 more)" in diverged.detail
        target = open_store(report.saved_to)
        return target, target.get_run(str(diverged.replay_id))

    def test_kept_in_its_sources_store_it_is_rows_per_divergence_and_reads_as_in_full(
        self, long_run: tuple[Path, rp.Run], tmp_path: Path
    ) -> None:
        """1,021 steps with 19 divergences are stored in under 40 rows (1,021 in full) and read
        back as the replay kept in full reads, verifying with its source."""
        path, source = long_run
        store, kept = self.check(path)
        full_store, full = self.check(path, save_to=tmp_path / "elsewhere.db")
        assert kept.event_count == full.event_count == self.STEPS + 20 + 1
        assert _rows(path, kept.id) < 40
        assert _rows(tmp_path / "elsewhere.db", full.id) == full.event_count
        assert _seen(store, kept.id) == _seen(full_store, full.id)
        assert verify_stored(store, kept).ok
        assert verify_stored(full_store, full).ok
        assert store.sources_of(kept.id) == [source.id]  # type: ignore[attr-defined]
        assert full_store.sources_of(full.id) == []  # type: ignore[attr-defined]

    def test_prune_keeps_the_source_a_kept_replay_serves_from(
        self, long_run: tuple[Path, rp.Run]
    ) -> None:
        """Pruning every run older than the kept replay deletes nothing: its source stays, and
        the replay still verifies."""
        path, source = long_run
        store, kept = self.check(path)
        assert store.delete_runs(before=kept.started_at) == 0
        assert store.get_run(source.id).id == source.id
        assert verify_stored(store, kept).ok

    def test_a_trace_file_corpus_is_kept_in_full_even_beside_its_run(
        self, long_run: tuple[Path, rp.Run], tmp_path: Path
    ) -> None:
        """Checked from a trace file, the replay kept in the store that holds the same run is
        written in full: the file, not that run, is what it replayed."""
        path, source = long_run
        corpus_dir = tmp_path / "corpus"
        write_trace(source, open_store(path).iter_events(source.id), corpus_dir / "long.jsonl")
        store, kept = self.check(corpus_dir, save_to=path)
        assert _rows(path, kept.id) == kept.event_count
        assert store.sources_of(kept.id) == []  # type: ignore[attr-defined]
        assert verify_stored(store, kept).ok

    def test_kept_by_a_worker_process_it_is_ranges_too(
        self, long_run: tuple[Path, rp.Run], tmp_path: Path
    ) -> None:
        """With worker processes (jobs=2, a second run to share them), the kept replay is the
        same few rows and verifies."""
        path, _ = long_run
        with rp.record(store=open_store(path), name="short"):
            long_agent(10)  # changed or not, it scores nothing
        store, kept = self.check(path, jobs=2)
        assert _rows(path, kept.id) < 40
        assert verify_stored(store, kept).ok

    @pytest.mark.parametrize(
        "sql",
        [
            "UPDATE events SET output = replace(output, 'answer 7 ', 'answer 8 ') "
            "WHERE run_id = ? AND seq = 8",
            "UPDATE events SET meta = replace(meta, ',1,51,', ',2,51,') "
            "WHERE run_id = ? AND instr(meta, ',1,51,') > 0",
        ],
        ids=["source-output", "range-start"],
    )
    def test_an_edit_of_the_source_or_the_range_fails_verify(
        self, long_run: tuple[Path, rp.Run], sql: str
    ) -> None:
        """A served output edited in the source, or a range moved along it, fails the kept
        replay's verification."""
        path, source = long_run
        store, kept = self.check(path)
        run_id = source.id if "output" in sql else kept.id
        db = sqlite3.connect(path)
        with db:
            assert db.execute(sql, (run_id,)).rowcount == 1
        db.close()
        assert not verify_stored(store, kept).ok

    def test_kept_in_postgresql_it_is_ranges_too(
        self, pg_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run checked in PostgreSQL keeps its replay there as a few rows that read back as
        every step and verify with the source."""
        import psycopg

        store = open_store(pg_url)
        with rp.record(store=store, name="long") as source:
            long_agent(self.STEPS)
        monkeypatch.setenv(CHANGED, "1")
        store, kept = self.check(store)
        rp.flush()
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT count(*) FROM events WHERE run_id = %s", (kept.id,))
            assert int(row.fetchone()[0]) < 40  # type: ignore[index]
        assert len(list(store.iter_events(kept.id))) == kept.event_count == self.STEPS + 21
        assert store.sources_of(kept.id) == [source.id]  # type: ignore[attr-defined]
        assert verify_stored(store, kept).ok
