"""Kept checks in the SQL stores, and the row types: the same rows back from SQLite and
PostgreSQL, read by name."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable.errors import RunNotFound
from replayable.store.base import (
    CHECK_COLUMNS,
    CHECK_RUN_COLUMNS,
    EVENT_COLUMNS,
    RUN_COLUMNS,
    CheckRow,
    CheckRunRow,
    EventRow,
    Outcome,
    RunRow,
    SQLStore,
    Store,
    row_to_event,
)
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore

Pair = tuple[SQLiteStore, PostgresStore]
Check = tuple[CheckRow, list[CheckRunRow]]


@pytest.fixture
def stores(tmp_path: Path, pg_url: str) -> Iterator[Pair]:
    """An empty SQLite store and an empty PostgreSQL store, side by side."""
    pair = (SQLiteStore(tmp_path / "checks.db"), PostgresStore(pg_url))
    yield pair
    for store in pair:
        store.close()


def make_check(check_id: str, started_at: float, outcomes: list[Outcome]) -> Check:
    head = CheckRow(
        id=check_id,
        started_at=started_at,
        ended_at=started_at + 2.5,
        store="sqlite:///traces.db",
        selection=orjson.dumps({"name": "support"}).decode(),
        environment="{}",
        summary=orjson.dumps({"counts": {o: outcomes.count(o) for o in outcomes}}).decode(),
        passed=int("diverged" not in outcomes),
    )
    runs = [
        CheckRunRow(check_id, i, f"run-{i}", "support", o, None, "", None, 0.25)
        for i, o in enumerate(outcomes)
    ]
    return head, runs


text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)  # no NUL in PG
outcome = st.sampled_from(["unchanged", "diverged", "failed", "not_replayable"])
run_rows = st.lists(
    st.tuples(
        st.none() | text,
        outcome,
        st.none() | text,
        st.none() | text,
        st.none() | text,
        st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False),
    ),
    max_size=5,
)
checks = st.lists(
    st.tuples(
        st.floats(min_value=1e9, max_value=2e9, allow_nan=False),
        st.none() | text,
        st.booleans(),
        run_rows,
    ),
    min_size=1,
    max_size=4,
)


def _build(prefix: str, drawn: list) -> list[Check]:
    out = []
    for i, (started_at, store, passed, runs) in enumerate(drawn):
        check_id = f"{prefix}-{i}"
        head = CheckRow(check_id, started_at, None, store, "{}", "{}", '{"counts":{}}', int(passed))
        rows = [CheckRunRow(check_id, seq, f"run-{seq}", *r) for seq, r in enumerate(runs)]
        out.append((head, rows))
    return out


class TestSameOnEveryStore:
    @settings(
        max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(drawn=checks)
    def test_listing_and_reading_give_identical_rows(self, stores: Pair, drawn: list) -> None:
        """The same checks saved into SQLite and PostgreSQL list in the same order (newest
        first, ties by id) and read back equal to what was saved, field by field."""
        saved = _build(secrets.token_hex(4), drawn)
        for store in stores:
            for head, rows in saved:
                store.save_check(head, rows)
        lite, pg = stores
        assert lite.list_checks(limit=1000) == pg.list_checks(limit=1000)
        listed = lite.list_checks(limit=1000)
        assert listed == sorted(listed, key=lambda c: (c.started_at, c.id), reverse=True)
        assert lite.list_checks(limit=2) == listed[:2]
        for head, rows in saved:
            assert lite.get_check(head.id) == pg.get_check(head.id) == (head, rows)

    def test_a_unique_prefix_finds_a_check_and_an_ambiguous_one_is_refused(
        self, stores: Pair
    ) -> None:
        """Both stores resolve a unique id prefix, and refuse an ambiguous, unknown or empty
        one with the same message."""
        for store in stores:
            store.save_check(*make_check("chk-aa1", 10.0, ["unchanged"]))
            store.save_check(*make_check("chk-ab2", 20.0, ["diverged", "failed"]))
            store.save_check(*make_check("chk_b%3", 30.0, []))
        for check_id, found in [("chk-aa", "chk-aa1"), ("chk-ab2", "chk-ab2"), ("chk_", "chk_b%3")]:
            assert [s.get_check(check_id)[0].id for s in stores] == [found, found]
        for bad, says in [("chk-a", "ambiguous"), ("chk_b_", "no check"), ("", "no check")]:
            messages = []
            for store in stores:
                with pytest.raises(RunNotFound, match=says) as err:
                    store.get_check(bad)
                messages.append(str(err.value).replace(store.url, "URL"))
            assert messages[0] == messages[1]


class TestNamedRows:
    def test_rows_expose_named_fields(self, backend: Store) -> None:
        """list_checks and get_check give CheckRow and CheckRunRow, read by field name."""
        backend.save_check(*make_check("named-1", 5.0, ["unchanged", "diverged"]))
        [listed] = backend.list_checks()
        head, runs = backend.get_check("named")
        assert isinstance(listed, CheckRow)
        assert isinstance(head, CheckRow)
        assert (head.id, head.passed, head.ended_at) == ("named-1", 0, 7.5)
        assert all(isinstance(r, CheckRunRow) for r in runs)
        assert [(r.seq, r.run_id, r.outcome) for r in runs] == [
            (0, "run-0", "unchanged"),
            (1, "run-1", "diverged"),
        ]

    @pytest.mark.parametrize(
        ("table", "columns"),
        [
            ("runs", RUN_COLUMNS),
            ("events", EVENT_COLUMNS),
            ("checks", CHECK_COLUMNS),
            ("check_runs", CHECK_RUN_COLUMNS),
        ],
    )
    def test_each_row_type_is_its_tables_columns_in_order(
        self, backend: Store, table: str, columns: tuple[str, ...]
    ) -> None:
        """A migrated table has exactly its row type's fields, in the same order, so a row read
        with ``SELECT *`` is that type too."""
        assert isinstance(backend, SQLStore)
        backend.list_runs()  # opens and migrates
        if isinstance(backend, SQLiteStore):
            got = [r[1] for r in backend._fetch(f"PRAGMA table_info({table})", ())]
        else:
            got = [
                name
                for (name,) in backend._fetch(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = %s "
                    "ORDER BY ordinal_position",
                    (table,),
                )
            ]
        assert tuple(got) == columns
        assert RunRow._fields == RUN_COLUMNS
        assert EventRow._fields == EVENT_COLUMNS

    def test_the_writer_hands_the_store_event_rows_by_name(self, backend: Store) -> None:
        """What the writer stores for a call is an EventRow whose named fields read back as the
        event (no positional indexing past the store)."""
        from replayable._writer import Pending, pending_row

        b = rp.boundary(kind="tool", name="rows:echo")(lambda text: text)
        row = pending_row(
            Pending(
                run_id="r1",
                seq=0,
                address="rows:echo/0",
                parent_seq=None,
                boundary=b.__replayable__,
                input=b'{"text":"hi"}',
                output=b'"hi"',
                error=None,
                meta={},
                started_at=1.0,
                duration_ns=5,
            ),
            {},
        )
        assert isinstance(row, EventRow)
        assert (row.boundary, row.input, row.output, row.chain_seq) == (
            "rows:echo",
            '{"text":"hi"}',
            '"hi"',
            0,
        )
        ev = row_to_event(row)
        assert (ev.input, ev.output, ev.hash) == ({"text": "hi"}, "hi", row.hash)
