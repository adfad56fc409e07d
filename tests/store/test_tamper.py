"""Tamper evidence: an edit to a run's header or a cut tail fails verify, in every backend.

Each case records a run, edits it the way someone with write access to the store (or the trace
file) would, and checks what `verify` says: without a signing key an edit is caught as long as
the editor did not recompute the hashes; with one, only the key holder can make an edit pass.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner
from tests.fixtures.old_stores import sqlite_before

import replayable as rp
from replayable._writer import writer_for
from replayable.cli import main
from replayable.errors import TraceCorrupt
from replayable.store.base import Store
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore
from replayable.trace import (
    HASH_VERSION,
    Run,
    chain_hash,
    event_content,
    genesis_hash,
    read_trace,
    rechain,
    seal_hash,
    verify_run,
    write_trace,
)

KEY = "k3y-for-tests"


@rp.boundary(kind="tool")
def step(i: int) -> dict[str, int]:
    return {"i": i, "sq": i * i}


@rp.boundary(kind="agent")
def agent(n: int) -> list[dict[str, int]]:
    if n < 0:
        raise ValueError("negative")
    return [step(i) for i in range(n)]


class Target:
    """A recorded run in one backend, with the raw access an attacker would have."""

    def __init__(self, kind: str, store: Store, tmp: Path, url: str | None = None) -> None:
        self.kind, self.store, self.tmp, self.url = kind, store, tmp, url
        self.run_id = ""
        self.file = tmp / "run.jsonl"

    def record(self, n: int = 4, *, error: bool = False) -> None:
        with (
            pytest.raises(ValueError) if error else _nothing(),
            rp.record(
                store=self.store, name="orig", tags={"env": "prod"}, metadata={"ticket": 1}
            ) as run,
        ):
            agent(-1 if error else n)
        self.run_id = run.id
        if self.kind == "file":
            stored = self.store.get_run(run.id)
            write_trace(stored, list(stored.events()), self.file)

    def sql(self, statement: str, *params: Any) -> None:
        rp.flush()  # edited behind replayable's back: its writes first
        if self.kind == "sqlite":
            assert isinstance(self.store, SQLiteStore)
            with sqlite3.connect(self.store.path) as db:
                db.execute(statement, params)
        else:
            assert self.url is not None
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(statement.replace("?", "%s"), params)

    def edit_run(self, **fields: Any) -> None:
        """Set header fields (JSON ones given as Python values)."""
        if self.kind == "file":
            lines = self.file.read_bytes().splitlines(keepends=True)
            header = orjson.loads(lines[0])
            header["run"].update(fields)
            lines[0] = orjson.dumps(header, option=orjson.OPT_SORT_KEYS) + b"\n"
            self.file.write_bytes(b"".join(lines))
            return
        for name, value in fields.items():
            as_json = name in ("tags", "metadata", "environment", "error") and value is not None
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode() if as_json else value
            self.sql(f"UPDATE runs SET {name} = ? WHERE id = ?", text, self.run_id)

    def cut_tail(self, keep: int) -> None:
        """Delete every event written after the first ``keep``."""
        if self.kind == "file":
            lines = self.file.read_bytes().splitlines(keepends=True)
            kept = [ln for ln in lines[1:] if orjson.loads(ln)["chain_seq"] < keep]
            self.file.write_bytes(b"".join([lines[0], *kept]))
            return
        self.sql("DELETE FROM events WHERE run_id = ? AND chain_seq >= ?", self.run_id, keep)

    def load(self) -> tuple[Run, list[Any]]:
        if self.kind == "file":
            return read_trace(self.file)
        run = self.store.get_run(self.run_id)
        return run, list(self.store.iter_events(run.id))

    def verify(self) -> Any:
        run, events = self.load()
        return verify_run(run, events)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture(params=["sqlite", "postgres", "file"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A fresh store of each kind (a trace file is exported from SQLite)."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        store: Store = PostgresStore(url)
        t = Target("postgres", store, tmp_path, url)
    else:
        store = SQLiteStore(tmp_path / "t.db")
        t = Target(request.param, store, tmp_path)
    yield t
    store.close()


HEADER_EDITS: list[tuple[str, dict[str, Any]]] = [
    ("status error -> ok", {"status": "ok", "error": None}),
    ("error message edited", {"error": {"type": "builtins:ValueError", "message": "fine"}}),
    ("name", {"name": "edited"}),
    ("tags", {"tags": {"env": "staging"}}),
    ("metadata", {"metadata": {"ticket": 2}}),
    ("environment", {"environment": {"git_commit": "0" * 40}}),
    ("started_at", {"started_at": 1.0}),
    ("ended_at", {"ended_at": 2.0}),
    ("parent_run", {"parent_run": "someone-else"}),
    ("hash version downgraded", {"hash_version": 1}),
    ("hash version downgraded to 2", {"hash_version": 2}),
    ("hash version from the future", {"hash_version": 4}),
]


class TestHeaderEdits:
    @pytest.mark.parametrize("signed", [False, True], ids=["no-key", "key"])
    @pytest.mark.parametrize(("what", "edit"), HEADER_EDITS, ids=[w for w, _ in HEADER_EDITS])
    def test_header_edit_fails_verify(
        self,
        target: Target,
        monkeypatch: pytest.MonkeyPatch,
        what: str,
        edit: dict[str, Any],
        signed: bool,
    ) -> None:
        """Any edit of the run's header (status, error, name, tags, metadata, environment,
        times, parent, hash version) fails verify, signed or not."""
        if signed:
            monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", KEY)
        target.record(error=True)
        assert target.verify().ok
        target.edit_run(**edit)
        result = target.verify()
        assert not result.ok, what
        if signed:
            assert result.signature in ("invalid", "unsigned", "missing") or result.problem

    def test_an_attacker_who_recomputes_the_seal_is_caught_only_by_the_key(
        self, target: Target, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """status error -> ok with a recomputed head passes without a key (nothing secret),
        and fails on the signature with one."""
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", KEY)
        target.record(error=True)
        run, events = target.load()
        chain = max(events, key=lambda e: e.chain_seq).hash
        run.status, run.error = "ok", None
        target.edit_run(status="ok", error=None, head_hash=seal_hash(run, chain, len(events)))
        result = target.verify()
        assert (result.ok, result.signature) == (False, "invalid")
        run, events = target.load()
        assert verify_run(run, events, key=b"").ok  # no key: a full rewrite is undetectable


class TestTruncation:
    @pytest.mark.parametrize("signed", [False, True], ids=["no-key", "key"])
    def test_cut_tail_with_the_head_left_fails(
        self, target: Target, monkeypatch: pytest.MonkeyPatch, signed: bool
    ) -> None:
        """Deleting the last events of a finished run fails verify (the head counts them)."""
        if signed:
            monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", KEY)
        target.record()
        target.cut_tail(2)
        assert not target.verify().ok

    def test_cut_tail_cleared_and_marked_running_fails_with_a_key(
        self, target: Target, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The attack from issue 11: cut the tail, clear head and signature, mark it running.
        With a signing key this is a missing signature."""
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", KEY)
        target.record()
        target.cut_tail(2)
        target.edit_run(status="running", head_hash=None, signature=None, ended_at=None)
        result = target.verify()
        assert (result.ok, result.signature) == (False, "missing")

    def test_finished_run_rolled_back_to_running_with_a_recomputed_head_fails(
        self, target: Target, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Marking a signed finished run running with the chain head as its checkpoint: the
        signature was over the sealed head, so it fails."""
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", KEY)
        target.record()
        run, events = target.load()
        prev = genesis_hash(run)
        for ev in sorted(events, key=lambda e: e.chain_seq)[:2]:
            prev = chain_hash(prev, event_content(ev))
        target.cut_tail(2)
        target.edit_run(status="running", head_hash=prev, event_count=2, ended_at=None)
        assert not target.verify().ok

    def test_checkpoint_of_a_run_still_recording_catches_a_cut_tail(
        self, backend: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a key every batch writes a signed checkpoint: a running run verifies, and once
        its tail is cut (or its checkpoint cleared) it does not."""
        if isinstance(backend, PostgresStore):
            target = Target("postgres", backend, tmp_path, backend._conninfo)
        else:
            target = Target("sqlite", backend, tmp_path)
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", KEY)
        with rp.record(store=target.store, name="live") as run:
            agent(3)
            writer_for(target.store).flush()
            target.run_id = run.id
            stored = target.store.get_run(run.id)
            assert (stored.status, stored.event_count) == ("running", 4)
            assert stored.signature is not None
            assert target.verify().ok
            target.cut_tail(1)
            assert not target.verify().ok
            target.edit_run(head_hash=None, signature=None, event_count=0)
            assert target.verify().signature == "missing"

    def test_a_run_emptied_and_set_back_to_running_is_reported_unfinished(
        self, target: Target
    ) -> None:
        """Without a key, a run whose events are all deleted and whose header says `running`
        again has an intact (empty) chain: verify passes it but says it is unfinished and not
        a complete record, in the result and in the CLI's line (it said "chain intact")."""
        target.record()
        target.cut_tail(0)
        target.edit_run(
            status="running", head_hash=None, signature=None, ended_at=None, event_count=0
        )
        result = target.verify()
        assert (result.ok, result.sealed, result.event_count) == (True, False, 0)
        if target.kind == "file":
            args = ["verify", str(target.file)]
        else:
            url = target.url if target.kind == "postgres" else target.store.url
            assert url is not None
            args = ["verify", target.run_id, "--store", url]
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, out.output
        assert out.output.startswith(f"ok so far: run {target.run_id} is UNFINISHED")
        assert "not a complete record" in out.output
        as_json = orjson.loads(CliRunner().invoke(main, [*args, "--json"]).output)
        assert (as_json["ok"], as_json["sealed"]) == (True, False)

    def test_a_finished_run_is_sealed(self, target: Target) -> None:
        """A run that ended verifies as sealed, and the CLI says plainly "chain intact"."""
        target.record()
        assert target.verify().sealed


class TestReplayRefusesUnverified:
    def test_signed_replay_refuses_an_edited_recording_unless_trusted(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """With a key, replaying a recording that does not verify raises TraceCorrupt;
        trust=True replays it with a warning; --trust on the command line too."""
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", KEY)
        store = SQLiteStore(tmp_path / "t.db")
        t = Target("sqlite", store, tmp_path)
        t.record(3)
        t.edit_run(name="edited")
        with pytest.raises(TraceCorrupt, match="--trust"), rp.replay(t.run_id, store=store):
            agent(3)
        with pytest.warns(rp.ReplayableWarning, match="does not verify"):
            replay = rp.replay(t.run_id, store=store, trust=True)
        with replay:
            agent(3)
        assert replay.ok
        cli = CliRunner().invoke(
            main, ["replay", t.run_id, "--store", str(tmp_path / "t.db"), "--import", __name__]
        )
        assert cli.exit_code == 2
        assert "--trust" in cli.output
        store.close()


class TestOldFormat:
    def test_version_1_runs_verify_and_say_the_header_is_unchecked(self, tmp_path: Path) -> None:
        """A run in the old format (no hash_version, chain from "") still verifies; verify
        marks it legacy and says so."""
        store = SQLiteStore(tmp_path / "t.db")
        t = Target("sqlite", store, tmp_path)
        t.record(2)
        run, events = t.load()
        prev = ""
        run.hash_version = 1
        for ev in sorted(events, key=lambda e: e.chain_seq):
            ev.hash = prev = chain_hash(prev, event_content(ev, 1))
        run.head_hash, run.signature = prev, None
        path = write_trace(run, events, tmp_path / "old.jsonl")
        lines = path.read_bytes().splitlines(keepends=True)
        header = orjson.loads(lines[0])
        del header["run"]["hash_version"]
        header["version"] = 1
        path.write_bytes(orjson.dumps(header) + b"\n" + b"".join(lines[1:]))
        old, old_events = read_trace(path)
        result = verify_run(old, old_events)
        assert (result.ok, result.legacy) == (True, True)
        out = CliRunner().invoke(main, ["verify", str(path)])
        assert out.exit_code == 0
        assert "old format" in out.output
        store.close()

    def test_version_2_runs_verify_and_rechain_in_version_2(self, tmp_path: Path) -> None:
        """A run hashed in version 2 (every event over its whole content) still verifies, an
        edit of one is still caught, and rechaining it (scan --fix) keeps version 2."""
        store = SQLiteStore(tmp_path / "t.db")
        t = Target("sqlite", store, tmp_path)
        t.record(3)
        run, events = t.load()
        assert run.hash_version == 3
        run.hash_version = 2
        prev = genesis_hash(run)
        ordered = sorted(events, key=lambda e: e.chain_seq)
        for ev in ordered:
            ev.hash = prev = chain_hash(prev, event_content(ev, 2))
        run.head_hash, run.signature = seal_hash(run, prev, len(ordered)), None
        assert verify_run(run, events).ok
        path = write_trace(run, events, tmp_path / "v2.jsonl")
        back, back_events = read_trace(path)
        assert back.hash_version == 2
        assert verify_run(back, back_events).ok
        back_events[1].output = "edited"
        assert not verify_run(back, back_events).ok
        rechain(back, back_events)
        assert back.hash_version == 2
        assert verify_run(back, back_events).ok
        first = min(back_events, key=lambda e: e.chain_seq)
        assert first.hash == chain_hash(genesis_hash(back), event_content(first, 2))
        store.close()

    @pytest.mark.parametrize("version", [0, -1, HASH_VERSION + 1, 99])
    def test_an_unknown_hash_version_is_named_not_reported_as_an_edit(
        self, tmp_path: Path, version: int
    ) -> None:
        """A run whose header says a hash version this replayable does not know (a newer one,
        or nonsense) fails verify saying so, before any event is hashed the wrong way."""
        store = SQLiteStore(tmp_path / "t.db")
        t = Target("sqlite", store, tmp_path)
        t.record(2)
        run, events = t.load()
        run.hash_version = version
        result = verify_run(run, events)
        assert not result.ok
        assert f"hash version {version}" in str(result.problem)
        assert f"knows versions 1 to {HASH_VERSION}" in str(result.problem)
        assert result.bad_seq is None
        store.close()

    def test_sqlite_migration_marks_existing_runs_version_1(self, tmp_path: Path) -> None:
        """Opening a database made before m003 keeps its runs at hash version 1."""
        db = tmp_path / "old.db"
        conn = sqlite_before(db, 2)
        conn.execute(
            "INSERT INTO runs (id, started_at, status, event_count) VALUES ('old', 1.0, 'ok', 0)"
        )
        conn.close()
        store = SQLiteStore(db)
        assert store.get_run("old").hash_version == 1
        assert "_m004_hash_version" in store.migrations()
        store.close()
