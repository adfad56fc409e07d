"""`replayable scan`: report secrets already recorded (never printing them), and `--fix` them so
that `verify` still passes."""

from __future__ import annotations

import re
import secrets
import sqlite3
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

import replayable as rp
from replayable import redact as redact_mod
from replayable.cli import main
from replayable.redact import REDACTED
from replayable.store.sqlite import SQLiteStore
from replayable.trace import read_trace, write_trace

ENV = {"NO_COLOR": "1", "COLUMNS": "200"}


@rp.boundary(kind="tool")
def lookup(query: str) -> dict[str, str]:
    return {"answer": f"found {query}"}


def _key() -> str:
    return "ghp_" + secrets.token_hex(18)


@pytest.fixture
def leaky(store_path: Path) -> tuple[rp.Run, str]:
    """A run recorded before the rule set knew GitHub tokens: the token is in the store."""
    key = _key()
    full = redact_mod._RULES
    redact_mod._RULES = redact_mod._RuleSet([r for r in full.rules if r.id != "github-token"], ())
    try:
        with rp.record(tags={"ticket": "T-1"}) as run:
            lookup(f"repo access with {key}")
        rp.flush()  # the writer redacts: under the older rule set, until it has written
    finally:
        redact_mod._RULES = full
    rp.open_store().close()
    assert key.encode() in b"".join(p.read_bytes() for p in store_path.parent.glob("traces.db*"))
    return run, key


class TestScan:
    def test_reports_run_address_field_and_rule_never_the_secret(
        self, leaky: tuple[rp.Run, str]
    ) -> None:
        """A secret in a store is reported by run, step, field path and rule; exit 1."""
        run, key = leaky
        result = CliRunner().invoke(main, ["scan"], env=ENV)
        assert result.exit_code == 1, result.output
        assert re.search(rf"{run.id}  \S*lookup/0  input\.query  github-token", result.output)
        assert re.search(rf"{run.id}  \S*lookup/0  output\.answer  github-token", result.output)
        assert key not in result.output
        assert key[4:14] not in result.output

    def test_clean_store_exits_0(self, store_path: Path) -> None:
        """A store with nothing secret in it says so and exits 0."""
        with rp.record():
            lookup("weather in Paris")
        result = CliRunner().invoke(main, ["scan"], env=ENV)
        assert result.exit_code == 0, result.output
        assert "no secrets found" in result.output

    def test_fix_redacts_rechains_and_verify_passes(
        self, leaky: tuple[rp.Run, str], store_path: Path
    ) -> None:
        """--fix removes the secret from the rows and the file, and verify passes after."""
        run, key = leaky
        fixed = CliRunner().invoke(main, ["scan", "--fix"], env=ENV)
        assert fixed.exit_code == 0, fixed.output
        assert CliRunner().invoke(main, ["scan"], env=ENV).exit_code == 0
        verified = CliRunner().invoke(main, ["verify", run.id], env=ENV)
        assert verified.exit_code == 0, verified.output
        (ev,) = list(rp.open_store().iter_events(run.id))
        assert ev.input == {"query": f"repo access with {REDACTED}"}
        rp.open_store().close()
        raw = b"".join(p.read_bytes() for p in store_path.parent.glob("traces.db*"))
        assert key.encode() not in raw

    def test_a_fixed_run_still_replays(self, leaky: tuple[rp.Run, str]) -> None:
        """--fix re-keys a step whose input held the secret, so a replay still matches it."""
        run, key = leaky
        assert CliRunner().invoke(main, ["scan", "--fix"], env=ENV).exit_code == 0
        with rp.replay(run.id) as r:
            assert lookup(f"repo access with {key}") == {
                "answer": f"found repo access with {REDACTED}"
            }
        assert r.divergences == []

    def test_fix_re_signs_a_signed_run(
        self, store_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A signed run is re-signed by --fix, so verify with the key still passes."""
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", "k3y-for-tests")
        key = _key()
        store = SQLiteStore(store_path)
        with rp.record(store) as run:
            lookup("hello")
        store.close()
        with sqlite3.connect(store_path) as db:  # an older recording with a secret in it
            db.execute(
                "UPDATE events SET input = ? WHERE run_id = ?",
                (f'{{"query":"{key}"}}', run.id),
            )
        assert CliRunner().invoke(main, ["verify", run.id], env=ENV).exit_code == 1
        assert CliRunner().invoke(main, ["scan", "--fix"], env=ENV).exit_code == 0
        verified = CliRunner().invoke(main, ["verify", run.id], env=ENV)
        assert verified.exit_code == 0, verified.output
        assert "valid" in verified.output

    def test_signed_run_without_key_is_refused(
        self, leaky: tuple[rp.Run, str], monkeypatch: pytest.MonkeyPatch, store_path: Path
    ) -> None:
        """--fix of a signed run with no signing key set is a usage error, changing nothing."""
        run, _ = leaky
        with sqlite3.connect(store_path) as db:
            db.execute("UPDATE runs SET signature = 'hmac-sha256:00' WHERE id = ?", (run.id,))
        result = CliRunner().invoke(main, ["scan", "--fix"], env=ENV)
        assert result.exit_code == 2
        assert "REPLAYABLE_SIGNING_KEY" in result.output

    def test_trace_files_fixed_in_place(self, leaky: tuple[rp.Run, str], tmp_path: Path) -> None:
        """Trace files are scanned and fixed in place; verify passes on the fixed file."""
        run, key = leaky
        store = rp.open_store()
        path = write_trace(store.get_run(run.id), store.iter_events(run.id), tmp_path / "t.jsonl")
        found = CliRunner().invoke(main, ["scan", str(path)], env=ENV)
        assert found.exit_code == 1
        assert "github-token" in found.output
        assert CliRunner().invoke(main, ["scan", "--fix", str(path)], env=ENV).exit_code == 0
        assert key not in path.read_text()
        verified = CliRunner().invoke(main, ["verify", str(path)], env=ENV)
        assert verified.exit_code == 0, verified.output
        _, events = read_trace(path)
        assert events[0].output == {"answer": f"found repo access with {REDACTED}"}

    def test_run_header_is_scanned(self, store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A secret in a run's stored argv is found in the header and reported as (run)."""
        key = _key()
        store = SQLiteStore(store_path)
        with rp.record(store) as run:
            lookup("x")
        store.close()
        with sqlite3.connect(store_path) as db:
            db.execute(
                "UPDATE runs SET environment = ? WHERE id = ?",
                (f'{{"argv":["agent.py","--github","{key}"]}}', run.id),
            )
        result = CliRunner().invoke(main, ["scan"], env=ENV)
        assert result.exit_code == 1
        assert f"{run.id}  (run)  environment.argv[2]  github-token" in result.output

    def test_postgres_store_fixed(self, pg_url: str) -> None:
        """A PostgreSQL store is scanned and fixed the same way; verify passes after."""
        key = _key()
        full = redact_mod._RULES
        redact_mod._RULES = redact_mod._RuleSet(
            [r for r in full.rules if r.id != "github-token"], ()
        )
        try:
            with rp.record(pg_url) as run:
                lookup(f"token {key}")
            rp.flush()  # the writer redacts: under the older rule set, until it has written
        finally:
            redact_mod._RULES = full
        found = CliRunner().invoke(main, ["scan", "--store", pg_url], env=ENV)
        assert found.exit_code == 1, found.output
        assert key not in found.output
        fixed = CliRunner().invoke(main, ["scan", "--fix", "--store", pg_url], env=ENV)
        assert fixed.exit_code == 0, fixed.output
        verified = CliRunner().invoke(main, ["verify", run.id, "--store", pg_url], env=ENV)
        assert verified.exit_code == 0, verified.output
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT input || output FROM events").fetchall()
        assert rows
        assert all(key not in r[0] for r in rows)

    def test_cassettes_are_scanned_and_fixed_and_still_serve(self, tmp_path: Path) -> None:
        """A cassette recorded before a rule knew a token shape: scan finds it by file, line,
        boundary, field and rule; --fix redacts it, re-keys the call, and the cassette still
        serves that call in replay mode."""
        key = _key()
        tape = tmp_path / "cassettes" / "lookup.jsonl"
        full = redact_mod._RULES
        redact_mod._RULES = redact_mod._RuleSet(
            [r for r in full.rules if r.id != "github-token"], ()
        )
        try:
            with rp.cassette(tape, mode="record"):
                lookup(f"repo access with {key}")
                lookup("weather in Paris")
        finally:
            redact_mod._RULES = full
        assert key in tape.read_text()
        found = CliRunner().invoke(main, ["scan", str(tape)], env=ENV)
        assert found.exit_code == 1, found.output
        assert f"{tape}  line 1 ({lookup.__module__}:lookup)  input.query  github-token" in (
            found.output
        )
        assert f"{tape}  line 1 ({lookup.__module__}:lookup)  output.answer  github-token" in (
            found.output
        )
        assert "line 2" not in found.output
        assert key not in found.output
        fixed = CliRunner().invoke(main, ["scan", "--fix", str(tape)], env=ENV)
        assert fixed.exit_code == 0, fixed.output
        assert key not in tape.read_text()
        assert CliRunner().invoke(main, ["scan", str(tape)], env=ENV).exit_code == 0
        with rp.cassette(tape, mode="replay") as served:
            assert lookup(f"repo access with {key}") == {
                "answer": f"found repo access with {REDACTED}"
            }
            assert lookup("weather in Paris") == {"answer": "found weather in Paris"}
        assert (served.hits, served.misses) == (2, 0)

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["scan", "missing.jsonl"], "no such trace file"),
            (["scan", "--store", "x.db", "t.jsonl"], "not both"),
        ],
    )
    def test_usage_errors_exit_2(self, args: list[str], message: str, tmp_path: Path) -> None:
        """Bad input is one line on stderr and exit 2."""
        (tmp_path / "t.jsonl").write_text("")
        result = CliRunner().invoke(main, args, env=ENV)
        assert result.exit_code == 2
        assert message in result.output
        assert "Traceback" not in result.output


PII_KEY = "scan-pii-key-" + "e" * 32


@rp.boundary(kind="agent")
def crm_agent(request: str) -> str:
    found = lookup(request)
    return found["answer"]


class TestPersonalData:
    def test_finds_fixes_and_the_run_still_replays(
        self, store_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`scan --pii` reports personal data recorded in clear (kind and place, never the
        value); `--fix` pseudonymizes it, re-keys and re-chains the run: `verify` passes, no
        value is left on disk, and the run replays with no divergence under the key."""
        request = "refund dana.whitfield@acme.io, card 4111 1111 1111 1111, call +1 415-867-5309"
        with rp.record(tags={"customer": "dana.whitfield@acme.io"}) as run:
            crm_agent(request)
        monkeypatch.setenv("REPLAYABLE_PII_KEY", PII_KEY)
        found = CliRunner().invoke(main, ["scan", "--pii"], env=ENV)
        assert found.exit_code == 1, found.output
        assert "email" in found.output
        assert "card" in found.output
        assert "phone" in found.output
        assert "whitfield" not in found.output
        fixed = CliRunner().invoke(main, ["scan", "--pii", "--fix"], env=ENV)
        assert fixed.exit_code == 0, fixed.output
        assert "pseudonymized" in fixed.output
        rp.flush()
        for f in store_path.parent.glob("traces.db*"):
            data = f.read_bytes()
            for part in (b"dana.whitfield", b"4111 1111", b"867-5309"):
                assert part not in data, f"{f.name}: {part!r}"
        verified = CliRunner().invoke(main, ["verify", run.id], env=ENV)
        assert verified.exit_code == 0, verified.output
        again = CliRunner().invoke(main, ["scan", "--pii"], env=ENV)
        assert again.exit_code == 0, again.output
        with rp.replay(run.id) as r:
            crm_agent(request)
        assert r.divergences == []

    def test_without_a_key_it_says_how_to_set_one(self) -> None:
        """`scan --pii` with no key set is a clear error, not a traceback."""
        with rp.record():
            lookup("dana@acme.io")
        out = CliRunner().invoke(main, ["scan", "--pii"], env=ENV)
        assert out.exit_code == 2
        assert "REPLAYABLE_PII_KEY" in out.output
        assert "Traceback" not in out.output

    def test_pii_ner_finds_and_fixes_a_name_in_free_text(
        self, store_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`scan --pii --pii-ner` reports a name written after a cue (no list, no field) and
        `--fix` pseudonymizes it; without --pii it is refused as a usage error."""
        with rp.record():
            lookup("Hello, I'm Dana Whitfield")
        monkeypatch.setenv("REPLAYABLE_PII_KEY", PII_KEY)
        plain = CliRunner().invoke(main, ["scan", "--pii"], env=ENV)
        assert plain.exit_code == 0, plain.output
        found = CliRunner().invoke(main, ["scan", "--pii", "--pii-ner"], env=ENV)
        assert found.exit_code == 1, found.output
        assert "name" in found.output
        assert "Whitfield" not in found.output
        fixed = CliRunner().invoke(main, ["scan", "--pii", "--pii-ner", "--fix"], env=ENV)
        assert fixed.exit_code == 0, fixed.output
        rp.flush()
        for f in store_path.parent.glob("traces.db*"):
            assert b"Whitfield" not in f.read_bytes(), f.name
        usage = CliRunner().invoke(main, ["scan", "--pii-ner"], env=ENV)
        assert usage.exit_code == 2
        assert "go with --pii" in usage.output
