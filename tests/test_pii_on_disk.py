"""Personal data recorded with ``pii=True`` never reaches the disk in clear, in any position or
file format, and the run still replays with no divergence; the vault reveals with the key."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import replayable as rp
from replayable.cli import main
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore
from replayable.trace import write_trace

KEY = "on-disk-pii-key-" + "c" * 32
NAME = "Dana Whitfield"

VALUES = {
    "email": "dana.whitfield@acme.io",
    "phone": "+1 415-867-5309",
    "card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "ip": "81.2.69.160",
    "ipv6": "2a00:1450:4001:81b::200e",
    "ssn": "123-45-6789",
    "name": NAME,
}
PII = rp.PII(names=[NAME], fields=["*.home_address"], key=KEY)


def fragments(value: str) -> list[str]:
    """What of a value must not be on disk: as written, as digits, the email's local part."""
    out = [value, value.lower()]
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) >= 9 and ":" not in value and "." not in value:
        out.append(digits)
    if "@" in value:
        out.append(value.split("@", maxsplit=1)[0])
    if value == NAME:
        out.append("Whitfield")
    return out


def assert_absent(blob: bytes | str, where: str) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    text = text.replace("\\n", "\n")
    for kind, value in {**VALUES, "address": "1 Main Street"}.items():
        for part in fragments(value):
            assert part not in text, f"{where}: the {kind} {part!r} is on disk"


@rp.boundary(kind="tool")
def lookup(query: str) -> dict[str, Any]:
    return {"hits": [{"note": f"match for {query}", "home_address": "1 Main Street"}]}


@rp.boundary(kind="tool")
def failing(detail: str) -> None:
    raise RuntimeError(f"upstream refused: {detail}")


@rp.boundary(kind="llm")
def streaming(text: str) -> Iterator[str]:
    yield "Reply: "
    half = len(text) // 2
    yield text[:half]  # the value split over two chunks
    yield text[half:]
    yield " ok"


@rp.boundary(kind="tool")
def annotated(n: int) -> int:
    rp.annotate(seen=CURRENT["v"])
    return n


@rp.boundary(kind="tool")
def owners(table: dict[str, str]) -> dict[str, str]:
    return {**table, "checked": "yes"}


@rp.boundary(kind="agent")
def agent(position: str, value: str) -> Any:
    if position == "argument":
        return lookup(f"customer {value} asked")
    if position == "exception":
        try:
            failing(value)
        except RuntimeError:
            return "failed"
    if position == "stream-chunk":
        return "".join(streaming(value))
    if position == "annotate":
        CURRENT["v"] = value
        return annotated(1)
    if position == "dict-key":
        return owners({value: "alice", "ops": "bob"})
    return lookup("nothing personal")


CURRENT: dict[str, str] = {"v": ""}
CALL_POSITIONS = ["argument", "exception", "stream-chunk", "annotate", "dict-key"]
HEADER_POSITIONS = ["tags", "metadata", "name", "argv"]


def record_position(
    position: str, value: str, store: Any, monkeypatch: pytest.MonkeyPatch
) -> rp.Run:
    tags: dict[str, str] = {"team": "support"}
    metadata: dict[str, Any] = {"ticket": 42}
    name = "support"
    if position == "tags":
        tags["customer"] = value
    elif position == "metadata":
        metadata["customer"] = {"contact": [value]}
    elif position == "name":
        name = f"support for {value}"
    elif position == "argv":
        monkeypatch.setattr(sys, "argv", ["agent.py", "--customer", value])
    with rp.record(store, name=name, tags=tags, metadata=metadata, pii=PII) as run:
        agent(position, value)
    return run


class TestBytesOnDisk:
    @pytest.mark.parametrize("position", CALL_POSITIONS + HEADER_POSITIONS)
    @pytest.mark.parametrize("kind", list(VALUES))
    def test_sqlite_wal_trace_file_and_export_hold_no_personal_value(
        self, kind: str, position: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each kind, in each position, is absent from the SQLite file, its WAL, a trace file
        and `replayable export`; the run replays with no divergence."""
        store = SQLiteStore(tmp_path / "s.db")
        run = record_position(position, VALUES[kind], store, monkeypatch)
        rp.flush()  # the files are read behind the store's back
        files = sorted(tmp_path.glob("s.db*"))
        assert any(f.name.endswith("-wal") for f in files)
        for f in files:
            assert_absent(f.read_bytes(), f.name)
        trace = write_trace(store.get_run(run.id), store.iter_events(run.id), tmp_path / "t.jsonl")
        assert_absent(trace.read_bytes(), "trace file")
        out = CliRunner().invoke(
            main, ["export", run.id, "--store", str(tmp_path / "s.db"), "-o", "x.jsonl"]
        )
        assert out.exit_code == 0, out.output
        assert_absent(Path("x.jsonl").read_bytes(), "export")
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        with rp.replay(run.id, store=store) as r:
            agent(position, VALUES[kind])
        assert r.divergences == []
        rp.flush()
        for f in sorted(tmp_path.glob("s.db*")):
            assert_absent(f.read_bytes(), f"{f.name} after the replay")
        store.close()

    @pytest.mark.parametrize("position", CALL_POSITIONS + HEADER_POSITIONS)
    def test_postgres_rows_hold_no_personal_value(
        self, position: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every kind, recorded in one position into PostgreSQL, is absent from the rows."""
        store = PostgresStore(pg_url)
        runs = [record_position(position, v, store, monkeypatch) for v in VALUES.values()]
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        with rp.replay(runs[0].id, store=store) as r:
            agent(position, next(iter(VALUES.values())))
        assert r.divergences == []
        rp.flush()
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT row_to_json(r)::text FROM runs r UNION ALL "
                "SELECT row_to_json(e)::text FROM events e"
            ).fetchall()
        store.close()
        assert len(rows) >= 2 * len(VALUES)
        assert_absent("\n".join(r[0] for r in rows), "postgres")


ALL = " / ".join(v for k, v in VALUES.items() if k != "ipv6")


class TestOtherFiles:
    def test_a_changed_input_diverges_with_pseudonyms_only(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A change in real data shows as a change of pseudonym; the divergence, the report,
        the stored replay, logs and warnings hold no personal value."""
        run = record_position("argument", ALL, None, monkeypatch)
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        caplog.set_level(logging.DEBUG, logger="replayable")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with rp.replay(run.id, strict=False, live=["lookup"]) as r:
                agent("argument", ALL.replace("4111 1111 1111 1111", "5500 0000 0000 0004"))
        assert [d.reason for d in r.divergences] == ["changed", "changed"]
        texts = [str(d) for d in r.divergences] + [r.report(), caplog.text]
        texts += [str(w.message) for w in caught]
        assert "4000 00" in r.report()  # the changed card shows as a changed pseudonym
        for text in texts:
            assert_absent(text, "divergence, report, logs or warnings")
        rp.flush()
        for f in Path().glob("traces.db*"):
            assert_absent(f.read_bytes(), f.name)

    def test_promote_writes_no_personal_value(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A promoted trace file and its test hold pseudonyms only."""
        run = record_position("argument", ALL, None, monkeypatch)
        out = CliRunner().invoke(main, ["promote", run.id, "-o", "p.jsonl", "--test", "test_p.py"])
        assert out.exit_code == 0, out.output
        for f in ("p.jsonl", "test_p.py"):
            assert_absent(Path(f).read_bytes(), f)

    def test_a_cassette_keeps_pseudonyms_and_serves_them(self) -> None:
        """A cassette with pii keeps pseudonyms in its file, and serves the same call again."""
        with rp.cassette("c.jsonl", pii=PII) as tape:
            first = lookup(f"customer {ALL} asked")
        assert tape.misses == 1
        assert_absent(Path("c.jsonl").read_bytes(), "cassette")
        with rp.cassette("c.jsonl", "replay", pii=PII) as tape:
            again = lookup(f"customer {ALL} asked")
        assert tape.hits == 1
        assert again["hits"][0]["note"] != first["hits"][0]["note"]
        assert_absent(json.dumps(again), "served value")

    def test_check_records_hold_no_personal_value(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`check` replays pii runs (key from the environment) and stores its records clean."""
        record_position("argument", ALL, None, monkeypatch)
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        report = rp.check(imports=[__name__])
        assert report.counts["unchanged"] == 1, report.summary()
        rp.flush()
        for f in Path().glob("traces.db*"):
            assert_absent(f.read_bytes(), f.name)


class TestReplayKey:
    def test_replay_without_the_key_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Replaying a pii run with no key says which key id it needs and how to set it."""
        run = record_position("argument", ALL, None, monkeypatch)
        with pytest.raises(rp.PIIKeyError, match=r"key id [0-9a-f]{16}.*REPLAYABLE_PII_KEY"):
            rp.replay(run.id)

    def test_replay_under_another_key_is_a_clear_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A key other than the run's is refused before anything runs: nothing would match."""
        run = record_position("argument", ALL, None, monkeypatch)
        monkeypatch.setenv("REPLAYABLE_PII_KEY", "another-key-" + "d" * 32)
        with pytest.raises(rp.PIIKeyError, match="recorded with"):
            rp.replay(run.id)


class TestVault:
    def test_show_reveal_with_the_key_and_refuses_without(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`show --reveal` prints real values with the key; without it, or with another key,
        it refuses with a clear error; the vault file holds no value in clear."""
        pii = rp.PII(names=[NAME], key=KEY, vault=tmp_path / "vault.db")
        with rp.record(pii=pii) as run:
            agent("argument", ALL)
        rp.flush()  # the writer fills the vault as it pseudonymizes
        assert_absent((tmp_path / "vault.db").read_bytes(), "vault")
        assert oct((tmp_path / "vault.db").stat().st_mode & 0o777) == "0o600"
        env = {"NO_COLOR": "1", "COLUMNS": "300"}
        plain = CliRunner().invoke(main, ["show", run.id], env=env)
        assert plain.exit_code == 0
        assert "@example.com" in plain.output
        assert_absent(plain.output, "show")
        refused = CliRunner().invoke(main, ["show", run.id, "--reveal"], env=env)
        assert refused.exit_code != 0
        assert "REPLAYABLE_PII_KEY" in refused.output
        assert "Traceback" not in refused.output
        wrong = CliRunner().invoke(
            main, ["show", run.id, "--reveal"], env={**env, "REPLAYABLE_PII_KEY": "x" * 40}
        )
        assert wrong.exit_code != 0
        assert "key id" in wrong.output
        shown = CliRunner().invoke(
            main, ["show", run.id, "--reveal"], env={**env, "REPLAYABLE_PII_KEY": KEY}
        )
        assert shown.exit_code == 0, shown.output
        assert VALUES["email"] in shown.output
        as_json = CliRunner().invoke(
            main, ["show", run.id, "--reveal", "--json"], env={**env, "REPLAYABLE_PII_KEY": KEY}
        )
        assert NAME in as_json.output
        assert VALUES["card"] in as_json.output

    def test_a_tampered_vault_is_a_clear_error(self, tmp_path: Path) -> None:
        """A value moved to another pseudonym's row does not open (the pseudonym is bound to
        its value): reveal refuses with a clear error instead of showing the wrong person."""
        import sqlite3

        pii = rp.PII(key=KEY, vault=tmp_path / "vault.db")
        with rp.record(pii=pii) as run:
            agent("argument", ALL)
        rp.flush()
        with sqlite3.connect(tmp_path / "vault.db") as db:
            rows = db.execute(
                "SELECT pseudonym, nonce, box FROM vault ORDER BY pseudonym"
            ).fetchall()
            assert len(rows) >= 2
            (a, _, _), (_, nonce, box) = rows[0], rows[1]
            db.execute("UPDATE vault SET nonce = ?, box = ? WHERE pseudonym = ?", (nonce, box, a))
        out = CliRunner().invoke(
            main, ["show", run.id, "--reveal"], env={"NO_COLOR": "1", "REPLAYABLE_PII_KEY": KEY}
        )
        assert out.exit_code == 2
        assert "does not open" in out.output
        assert "Traceback" not in out.output


class TestRecordedKeyFile:
    def test_a_key_file_named_in_code_is_found_by_replay_only_if_private(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run recorded with PII(key_file=...) keeps the path (never the key) and replays
        without the environment; a file others can read, or holding another key, is not used."""
        keyfile = tmp_path / "pii.key"
        keyfile.write_text(KEY)
        keyfile.chmod(0o600)
        with rp.record(pii=rp.PII(key_file=keyfile)) as run:
            agent("argument", ALL)
        assert KEY not in json.dumps(run.metadata)
        with rp.replay(run.id) as r:
            agent("argument", ALL)
        assert r.ok
        keyfile.chmod(0o644)
        with pytest.raises(rp.PIIKeyError, match="needs the same key"):
            rp.replay(run.id)
        keyfile.chmod(0o600)
        keyfile.write_text("some-other-key-" + "z" * 32)
        with pytest.raises(rp.PIIKeyError, match="needs the same key"):
            rp.replay(run.id)
