"""Hash version 3 under attack: edits to a v3 run in a store, the payload memo of stored events,
the served-step digest reuse, scan --fix, and the replay fast path against the slow one.

The review found four problems, fixed with these tests: bytes moved between a v3 event's error,
key, kind and meta kept its hash; a run set back to hash version 1 and unsigned passed under a
signing key; an ``orjson.Fragment`` under an engine meta key skipped the secret scan; a
``StoredEvent`` built by ``__init__`` could not be hashed."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import importlib
import itertools
import pickle
import random
import sqlite3
import threading
import warnings
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner

import replayable as rp
from replayable import _writer, canonical
from replayable import redact as redact_mod
from replayable.cli import main
from replayable.store.base import Store
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore
from replayable.trace import (
    Event,
    StoredEvent,
    chain_hash,
    event_content,
    event_hash,
    event_payload,
    payload_digest,
    verify_run,
)

replayer_mod = importlib.import_module("replayable._replayer")

KEY = "k3y-for-review-tests"


@rp.boundary(kind="tool")
def v3_step(i: int) -> dict[str, Any]:
    rp.annotate(n=i)
    if i == 2:
        raise ValueError(f"boom {i}")
    return {"i": i, "t": "x" * i}


@rp.boundary(kind="agent")
def v3_agent(n: int) -> list[Any]:
    out: list[Any] = []
    for i in range(n):
        try:
            out.append(v3_step(i))
        except ValueError:
            out.append(None)
    return out


class _Raw:
    """SQL access to one backend, as an editor of the store would have it."""

    def __init__(self, kind: str, tmp: Path, url: str | None) -> None:
        self.kind, self.tmp, self.url = kind, tmp, url

    def open(self) -> Store:
        if self.kind == "sqlite":
            return SQLiteStore(self.tmp / "v3.db")
        assert self.url is not None
        return PostgresStore(self.url)

    def execute(self, sql: str, *params: Any) -> list[Any]:
        rp.flush()  # read and edited behind replayable's back: its writes first
        if self.kind == "sqlite":
            with sqlite3.connect(self.tmp / "v3.db") as db:
                return db.execute(sql, params).fetchall()
        assert self.url is not None
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []


@pytest.fixture(params=["sqlite", "postgres"])
def raw(request: pytest.FixtureRequest, tmp_path: Path) -> _Raw:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return _Raw(request.param, tmp_path, url)


def _verify(raw: _Raw, run_id: str) -> bool:
    store = raw.open()
    try:
        run = store.get_run(run_id)
        return verify_run(run, list(store.iter_events(run_id))).ok
    finally:
        store.close()


def _text(v: Any) -> Any:
    return bytes(v).decode() if isinstance(v, bytes | memoryview) else v


class TestEditsOfAVersion3Run:
    """Every edit of a stored v3 event that changes what it reads as is caught."""

    def test_field_edits_moves_and_swaps_fail_verify(self, raw: _Raw) -> None:
        store = raw.open()
        with rp.record(store=store) as run:
            v3_agent(4)
        store.close()
        assert run.hash_version == 3
        assert _verify(raw, run.id)
        cols = (
            "seq, chain_seq, address, parent_seq, boundary, kind, key, input, output, error, meta"
        )
        rows = raw.execute(f"SELECT {cols} FROM events WHERE run_id = ? ORDER BY seq", run.id)
        tried = 0

        def edit(sql: str, *params: Any, undo: tuple[str, tuple[Any, ...]]) -> None:
            nonlocal tried
            raw.execute(sql, *params)
            try:
                assert not _verify(raw, run.id), sql
            finally:
                raw.execute(undo[0], *undo[1])
            tried += 1

        timing = {
            r[0]: tuple(r[1:])
            for r in raw.execute(
                "SELECT seq, started_at, duration_ns, parent_seq FROM events WHERE run_id = ?",
                run.id,
            )
        }
        for row in rows:
            seq = row[0]
            values = dict(zip([c.strip() for c in cols.split(",")], row, strict=True))
            for col in ("address", "boundary", "kind", "key", "input", "output", "error", "meta"):
                old = _text(values[col])
                for new in ('"edited"', "{}", "[1]", "0"):
                    if new == old:
                        continue
                    if col in ("error", "meta") and old in (None, "null", "{}") and new == "{}":
                        continue  # the empty value, stored another way
                    edit(
                        f"UPDATE events SET {col} = ? WHERE run_id = ? AND seq = ?",
                        new,
                        run.id,
                        seq,
                        undo=(
                            f"UPDATE events SET {col} = ? WHERE run_id = ? AND seq = ?",
                            (old, run.id, seq),
                        ),
                    )
            inp, out = _text(values["input"]) or "null", _text(values["output"]) or "null"
            undo = (
                "UPDATE events SET input = ?, output = ? WHERE run_id = ? AND seq = ?",
                (inp, out, run.id, seq),
            )
            if inp != out:  # the two trade places
                edit(
                    "UPDATE events SET input = ?, output = ? WHERE run_id = ? AND seq = ?",
                    out,
                    inp,
                    run.id,
                    seq,
                    undo=undo,
                )
            # a byte moved from the end of the input to the front of the output, and back
            edit(
                "UPDATE events SET input = ?, output = ? WHERE run_id = ? AND seq = ?",
                inp[:-1],
                inp[-1:] + out,
                run.id,
                seq,
                undo=undo,
            )
            edit(
                "UPDATE events SET input = ?, output = ? WHERE run_id = ? AND seq = ?",
                inp + out[:1],
                out[1:],
                run.id,
                seq,
                undo=undo,
            )
            for col, num in (("started_at", 1.0), ("duration_ns", 7), ("parent_seq", 99)):
                edit(
                    f"UPDATE events SET {col} = ? WHERE run_id = ? AND seq = ?",
                    num,
                    run.id,
                    seq,
                    undo=(
                        "UPDATE events SET started_at = ?, duration_ns = ?, parent_seq = ? "
                        "WHERE run_id = ? AND seq = ?",
                        (*timing[seq], run.id, seq),
                    ),
                )
        # whole payloads swapped between two events
        for a, b in itertools.combinations(rows, 2):
            for col in ("input", "output"):
                ia, ib = a[7 if col == "input" else 8], b[7 if col == "input" else 8]
                if _text(ia) == _text(ib):
                    continue
                raw.execute(
                    f"UPDATE events SET {col} = ? WHERE run_id = ? AND seq = ?",
                    _text(ib),
                    run.id,
                    a[0],
                )
                raw.execute(
                    f"UPDATE events SET {col} = ? WHERE run_id = ? AND seq = ?",
                    _text(ia),
                    run.id,
                    b[0],
                )
                assert not _verify(raw, run.id)
                raw.execute(
                    f"UPDATE events SET {col} = ? WHERE run_id = ? AND seq = ?",
                    _text(ia),
                    run.id,
                    a[0],
                )
                raw.execute(
                    f"UPDATE events SET {col} = ? WHERE run_id = ? AND seq = ?",
                    _text(ib),
                    run.id,
                    b[0],
                )
                tried += 1
        assert _verify(raw, run.id)
        assert tried > 100

    def test_a_downgrade_to_version_2_with_its_chain_recomputed_fails_under_a_key(
        self, raw: _Raw, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """3 -> 2 with every event rehashed in version 2: the signed head no longer matches."""
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", KEY)
        store = raw.open()
        with rp.record(store=store) as run:
            v3_agent(3)
        store.close()
        raw.execute("UPDATE runs SET hash_version = 2 WHERE id = ?", run.id)
        store = raw.open()
        back = store.get_run(run.id)
        events = sorted(store.iter_events(run.id), key=lambda e: e.chain_seq)
        store.close()
        from replayable.trace import genesis_hash

        prev = genesis_hash(back)
        for ev in events:
            ev.hash = prev = chain_hash(prev, event_content(ev, 2))
            raw.execute(
                "UPDATE events SET hash = ? WHERE run_id = ? AND seq = ?", ev.hash, run.id, ev.seq
            )
        assert not _verify(raw, run.id)


class TestPayloadMemo:
    """A stored event's remembered payload digest is never served for bytes it was not
    computed from."""

    @staticmethod
    def _stored() -> StoredEvent:
        return StoredEvent.from_stored(
            "r",
            1,
            0,
            "a",
            None,
            "b",
            "tool",
            "k",
            b'{"q":"in"}',
            b'{"a":"out"}',
            None,
            b"{}",
            1.0,
            5,
            "",
        )

    @staticmethod
    def _truth(ev: Event) -> str:
        inp, out, _, _ = ev.stored_fields()
        return payload_digest(inp, out)

    def test_no_edit_is_served_from_the_memo(self) -> None:
        def swap(ev: StoredEvent) -> None:
            i, o = ev.stored("input"), ev.stored("output")
            ev.set_stored("input", o)
            ev.set_stored("output", i)

        edits: list[Callable[[StoredEvent], None]] = [
            lambda ev: setattr(ev, "output", {"a": "edited"}),
            lambda ev: setattr(ev, "input", {"q": "edited"}),
            lambda ev: ev.output.__setitem__("a", "in place"),
            lambda ev: ev.set_stored("output", b'"x"'),
            lambda ev: ev.set_stored("output", ev.stored("output")),  # the same object again
            swap,
        ]
        for edit in edits:
            ev = self._stored()
            event_payload(ev)  # remembered
            edit(ev)
            assert event_payload(ev) == self._truth(ev)

    @pytest.mark.parametrize(
        "dup", [copy.copy, copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))]
    )
    def test_copies_hash_as_the_original(self, dup: Any) -> None:
        ev = self._stored()
        h = event_hash("p" * 64, ev)
        twin = dup(ev)
        assert event_hash("p" * 64, twin) == h
        twin.output = "edited"
        assert event_hash("p" * 64, twin) != h
        assert event_hash("p" * 64, ev) == h

    def test_a_replaced_stored_event_hashes(self) -> None:
        ev = self._stored()
        twin = dataclasses.replace(ev, output="z")
        assert event_hash("", twin) == event_hash("", Event.from_dict(twin.to_dict()))


# -- metadata without the scan -------------------------------------------------------------


@pytest.mark.usefixtures("redaction_rules")
class TestEngineMetaRules:
    @pytest.mark.parametrize(
        ("rule", "meta"),
        [
            ("seq", {"source_seq": 3}),
            ("sourceSeq", {"source_seq": 3}),
            ("closed early", {"closed_early": 1}),
            ("throws", {"handled_throws": [1, 2]}),
            ("stream", {"stream": 1}),
            ("never started", {"never_started": 1}),
        ],
    )
    def test_a_user_key_naming_part_of_an_engine_key_is_applied(
        self, rule: str, meta: dict[str, Any]
    ) -> None:
        assert redact_mod.names_clean(_writer._ENGINE_META)
        assert orjson.loads(_writer._meta_bytes(meta)) == meta
        redact_mod.add_key(rule)
        assert not redact_mod.names_clean(_writer._ENGINE_META)
        assert orjson.loads(_writer._meta_bytes(meta)) == dict.fromkeys(meta, "[REDACTED]")
        assert _writer._meta_bytes(meta) == canonical.dumps(redact_mod.redact(meta))

    def test_a_pattern_without_keywords_turns_the_fast_path_off(self) -> None:
        redact_mod.add_pattern(r"\bsource_seq\b", name="odd")
        assert not redact_mod.names_clean(_writer._ENGINE_META)

    def test_a_fragment_under_an_engine_key_is_not_stored_raw(self) -> None:
        secret = b"sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
        data = _writer._meta_bytes({"served": orjson.Fragment(secret)})
        assert secret not in data
        assert orjson.loads(data) == {"served": "[REDACTED]"}


# -- tamper evidence: what the review found -------------------------------------------------


@rp.boundary(kind="tool")
def annotated(q: str) -> str:
    rp.annotate(a=0, key="chosen-key", kind="agent", meta={"z": 1})
    return "result"


def test_bytes_moved_between_error_key_kind_and_meta_fail_verify(raw: _Raw) -> None:
    store = raw.open()
    with rp.record(store=store) as run:
        annotated("q")
    store.close()
    assert _verify(raw, run.id)
    key, kind, meta = raw.execute("SELECT key, kind, meta FROM events WHERE run_id = ?", run.id)[0]
    meta = _text(meta)
    forged_error = f'null,"key":"{key}","kind":"{kind}","meta":' + meta[: meta.index(',"key":')]
    forged_meta = meta[meta.index(',"meta":') + len(',"meta":') :]
    raw.execute(
        "UPDATE events SET error = ?, key = ?, kind = ?, meta = ? WHERE run_id = ?",
        forged_error,
        "chosen-key",
        "agent",
        forged_meta,
        run.id,
    )
    assert not _verify(raw, run.id)


@rp.boundary(kind="tool")
def pay(amount: int) -> dict[str, int]:
    return {"paid": amount}


def test_a_downgrade_to_version_1_fails_under_a_key(
    raw: _Raw, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", KEY)
    store = raw.open()
    with rp.record(store=store) as run:
        pay(10)
    store.close()
    raw.execute("UPDATE events SET output = ? WHERE run_id = ?", '{"paid":100000}', run.id)
    raw.execute(
        "UPDATE runs SET hash_version = 1, status = 'running', head_hash = NULL, "
        "signature = NULL, ended_at = NULL WHERE id = ?",
        run.id,
    )
    store = raw.open()
    events = sorted(store.iter_events(run.id), key=lambda e: e.chain_seq)
    store.close()
    prev = ""
    for ev in events:
        ev.hash = prev = chain_hash(prev, event_content(ev, 1))
        raw.execute(
            "UPDATE events SET hash = ? WHERE run_id = ? AND seq = ?", ev.hash, run.id, ev.seq
        )
    assert not _verify(raw, run.id)


# -- served steps, scan --fix -----------------------------------------------------------------

SECRET = "acme_" + "0123456789abcdef" * 2


@rp.boundary(kind="tool")
def leaky(q: str) -> dict[str, str]:
    return {"v": SECRET, "q": q}


@rp.boundary(kind="tool")
def double(q: int) -> int:
    return q * 2


@rp.boundary(kind="agent")
def leaky_agent() -> list[Any]:
    return [leaky("a"), double(3), leaky("b")]


def test_scan_fix_keeps_a_source_its_replays_and_a_replay_of_a_replay_verifying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redact_mod, "_RULES", redact_mod._RULES)
    path = tmp_path / "fix.db"
    store = SQLiteStore(path)
    with rp.record(store=store) as run:
        leaky_agent()
    with rp.replay(run.id, store=store) as r1:
        leaky_agent()
    with rp.replay(r1.run.id, store=store) as r2:
        leaky_agent()
    ids = [run.id, r1.run.id, r2.run.id]
    store.close()
    redact_mod.add_pattern(r"acme_[0-9a-f]{32}", name="acme", keywords=["acme_"])
    result = CliRunner().invoke(main, ["scan", "--store", f"sqlite:///{path}", "--fix"])
    assert result.exit_code == 0, result.output
    store = SQLiteStore(path)
    for rid in ids:
        back = store.get_run(rid)
        events = list(store.iter_events(rid))
        assert back.hash_version == 3
        assert verify_run(back, events).ok
        assert SECRET not in orjson.dumps([e.output for e in events]).decode()
    store.close()
    assert SECRET.encode() not in path.read_bytes()


# -- the replay fast path against the slow one ------------------------------------------------

_SHIFT = {"x": 0}


@rp.boundary(kind="llm")
def fp_llm(p: str) -> dict[str, str]:
    return {"text": p + "!" + str(random.random())}


@rp.boundary(kind="tool")
def fp_tool(i: int) -> dict[str, Any]:
    if threading.current_thread() is not threading.main_thread():
        # The pool's threads would draw from the seeded generator in whatever order they run
        # (a loaded machine reorders them): their value depends on the argument alone.
        return {"i": i, "r": random.Random(i).random()}
    return {"i": i, "r": random.random()}


@rp.boundary(kind="tool")
def fp_gen(n: int) -> Generator[str, None, None]:
    for i in range(n):
        yield f"t{i}-{random.random()}"


@rp.boundary(kind="tool")
async def fp_atool(i: int) -> float:
    await asyncio.sleep(0)
    return i * random.random()


@rp.boundary(kind="tool")
def fp_boom(i: int) -> None:
    raise ValueError(f"boom {i} {random.random()}")


@rp.boundary(kind="tool")
def fp_meta(i: int) -> float:
    rp.annotate(n=i, served=i)
    return random.random()


@rp.boundary(kind="agent")
def fp_agent(n: int) -> list[Any]:
    out: list[Any] = [fp_llm("q")]
    for i in range(n):
        out.append(fp_tool(i + _SHIFT["x"] * (i == 1)))
    out.append(list(fp_gen(3)))
    g = fp_gen(4)
    out.append(next(g))
    g.close()
    try:
        fp_boom(1)
    except ValueError as e:
        out.append(str(e))
    out.append(fp_meta(2))
    with ThreadPoolExecutor(3) as ex:
        out.append(sorted(x["i"] for x in ex.map(rp.bind(fp_tool), [10, 11, 12])))

    async def gather() -> list[float]:
        return list(await asyncio.gather(*(fp_atool(i) for i in range(3))))

    out.append(asyncio.run(gather()))
    out.append(fp_tool(0))
    out.append(fp_tool(0))
    return out


def _replay_outcome(run_id: str, store: Store, **options: Any) -> dict[str, Any]:
    res: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with rp.replay(run_id, store=store, **options) as r:
                res["out"] = fp_agent(3)
        except Exception as e:  # the divergence, compared below
            res["exc"] = str(e).replace(run_id, "RUN")
    res["divergences"] = [(d.reason, d.address) for d in r.divergences]

    back = store.get_run(r.run.id)
    events = sorted(back.events(), key=lambda e: e.seq)
    res["events"] = [
        (
            e.seq,
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
        for e in events
    ]
    res["verify"] = verify_run(back, events).ok
    return res


@pytest.mark.parametrize("changed", [0, 1])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"live": ["fp_tool"]},
        {"live": ["fp_llm"]},
        {"live": ["fp_tool#2"]},
        {"match": "key"},
        {"strict": False},
    ],
    ids=repr,
)
def test_the_fast_path_replays_as_the_plan_does(
    changed: int, options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Differential: every replay gives the same outputs, divergences and events with the
    matcher's byte-for-byte shortcut turned off (every call keyed and matched by key)."""
    store = SQLiteStore(tmp_path / "fp.db")
    _SHIFT["x"] = 0
    with rp.record(store=store) as run:
        fp_agent(3)
    _SHIFT["x"] = changed
    random.seed(1)
    fast = _replay_outcome(run.id, store, **options)
    # No recorded input is ever byte for byte the call's: every call takes the keyed match.
    monkeypatch.setattr(replayer_mod.RecordedRun, "next_if_same", lambda self, gkey, data: None)
    random.seed(1)
    slow = _replay_outcome(run.id, store, **options)
    _SHIFT["x"] = 0
    assert fast == slow
    assert fast["verify"]
    store.close()
