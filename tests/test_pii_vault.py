"""The personal-data vault as ``show --reveal`` reads it: only a vault, and only read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import replayable as rp
from replayable._pii_vault import reveal_run
from replayable.cli import main

KEY = "vault-test-pii-key-" + "v" * 32
EMAIL = "dana.whitfield@acme.io"


def vaulted_run(tmp_path: Path) -> str:
    """A run recorded with pii and a vault at ``tmp_path/vault.db``; its id."""
    lookup = rp.boundary(kind="tool", name="vault:lookup")(lambda email: {"email": email})
    with rp.record(pii=rp.PII(key=KEY, vault=tmp_path / "vault.db")) as run:
        lookup(EMAIL)
    rp.flush()
    return run.id


def tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master"))


class TestRevealReadsOnlyAVault:
    def test_a_file_that_is_no_vault_is_refused_and_left_unchanged(self, tmp_path: Path) -> None:
        """`--reveal --vault F` on an SQLite file that is no vault (the store itself, an app's
        database) refuses with a clear error and writes nothing into F."""
        run_id = vaulted_run(tmp_path)
        other = tmp_path / "app.db"
        with sqlite3.connect(other) as db:
            db.execute("CREATE TABLE customers (email TEXT)")
        before = other.read_bytes()
        out = CliRunner().invoke(
            main,
            ["show", run_id, "--reveal", "--vault", str(other)],
            env={"NO_COLOR": "1", "REPLAYABLE_PII_KEY": KEY},
        )
        assert out.exit_code == 2, out.output
        assert "not a personal-data vault" in out.output
        assert "Traceback" not in out.output
        assert other.read_bytes() == before
        assert tables(other) == ["customers"]

    def test_a_run_naming_another_file_as_its_vault_cannot_make_reveal_write_to_it(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run's settings (editable by whoever can edit the store) name the vault: reveal
        opens it read-only, so a forged path cannot get tables written into another file."""
        run_id = vaulted_run(tmp_path)
        target = tmp_path / "precious.db"
        with sqlite3.connect(target) as db:
            db.execute("CREATE TABLE t (x)")
        store = rp.open_store()
        run = store.get_run(run_id)
        run.metadata["pii"]["vault"] = str(target)
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        with pytest.raises(rp.PIIKeyError, match="not a personal-data vault"):
            reveal_run(run, [])
        assert tables(target) == ["t"]

    def test_the_real_vault_still_reveals(self, tmp_path: Path) -> None:
        """The vault the run was recorded with reveals its values, and is not written to."""
        run_id = vaulted_run(tmp_path)
        before = (tmp_path / "vault.db").read_bytes()
        out = CliRunner().invoke(
            main,
            ["show", run_id, "--reveal"],
            env={"NO_COLOR": "1", "REPLAYABLE_PII_KEY": KEY},
        )
        assert out.exit_code == 0, out.output
        assert EMAIL in out.output
        assert (tmp_path / "vault.db").read_bytes() == before

    def test_vault_without_reveal_is_a_usage_error(self, tmp_path: Path) -> None:
        """`show --vault F` without `--reveal` says it needs --reveal instead of quietly
        showing pseudonyms as if the vault had been read."""
        run_id = vaulted_run(tmp_path)
        out = CliRunner().invoke(
            main,
            ["show", run_id, "--vault", str(tmp_path / "vault.db")],
            env={"NO_COLOR": "1", "REPLAYABLE_PII_KEY": KEY},
        )
        assert out.exit_code == 2, out.output
        assert "--reveal" in out.output
        assert "Traceback" not in out.output
