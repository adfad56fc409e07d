"""The vault: each pseudonym's real value, encrypted, in a file of its own, apart from the runs.

Optional (``rp.PII(vault="pii-vault.db")``). A SQLite file holding, per pseudonym, its value
sealed with AES-GCM (the ``cryptography`` library) under a key derived from the PII key, the
pseudonym as associated data (a value moved to another pseudonym's row does not open). Without
the key the file tells nothing but which pseudonyms exist; with it, ``replayable show RUN
--reveal`` and ``replayable serve --reveal`` show real values. The file is created readable
by its owner only. A wrong key is a clear error (:class:`~replayable.errors.PIIKeyError`),
checked against the key id the vault was made with.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replayable.errors import PIIKeyError, StoreUnavailable

if TYPE_CHECKING:
    from replayable.trace import Event, Run

__all__ = ["Vault", "reveal", "reveal_run"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vault_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vault (
    pseudonym TEXT PRIMARY KEY, nonce BLOB NOT NULL, box BLOB NOT NULL
);
"""


def _aead(key: bytes) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:  # pragma: no cover - the extra is in every install we test
        raise PIIKeyError(
            'the personal-data vault needs the cryptography library: pip install "replayable[pii]"'
        ) from exc
    from replayable._pii import derive

    return AESGCM(derive(key, "vault"))


class Vault:
    """Pseudonym -> value, sealed under the PII key, in its own SQLite file."""

    def __init__(self, path: Path, key: bytes, *, read_only: bool = False) -> None:
        """Open (or, unless ``read_only``, create) the vault at ``path``. Read-only, the file
        must already be a vault: reveal never writes into a file a run's settings name."""
        from replayable._pii import key_id

        self.path = path
        self._aead = _aead(key)
        self._key_id = key_id(key)
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        row = self._open_existing(path) if read_only else self._open_or_create(path)
        if row is None and read_only:
            raise PIIKeyError(
                f"{path} is not a personal-data vault (it holds no vault key id): pass --vault "
                "with the vault file the run was recorded with (PII(vault=...))"
            )
        if row is None:
            self._db.execute(
                "INSERT INTO vault_meta (name, value) VALUES ('key_id', ?)", (self._key_id,)
            )
        elif row[0] != self._key_id:
            raise PIIKeyError(
                f"the vault {path} was made under key id {row[0]}, but the key set now has id "
                f"{self._key_id}: set $REPLAYABLE_PII_KEY to the key the runs were recorded with"
            )

    def _open_or_create(self, path: Path) -> tuple[str] | None:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            os.close(fd)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.executescript(_SCHEMA)
            row = self._stored_key_id()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the personal-data vault {path}: {exc}") from exc
        return row

    def _stored_key_id(self) -> tuple[str] | None:
        """The key id row the open vault was made under, None in a vault not yet stamped."""
        row: tuple[str] | None = self._db.execute(
            "SELECT value FROM vault_meta WHERE name = 'key_id'"
        ).fetchone()
        return row

    def _open_existing(self, path: Path) -> tuple[str] | None:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            names = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            if not {"vault", "vault_meta"} <= names:
                self._db.close()
                return None
            row = self._stored_key_id()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the personal-data vault {path}: {exc}") from exc
        return row

    def add(self, pseudonym: str, value: str) -> None:
        """Keep ``value`` under ``pseudonym`` (once; the first value stays)."""
        if pseudonym in self._seen or pseudonym == value:
            return
        nonce = os.urandom(12)
        box = self._aead.encrypt(nonce, value.encode(), pseudonym.encode())
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO vault (pseudonym, nonce, box) VALUES (?, ?, ?)",
                (pseudonym, nonce, box),
            )
            self._seen.add(pseudonym)

    def entries(self) -> dict[str, str]:
        """Every pseudonym with its value (decrypted here: the caller holds the key)."""
        from cryptography.exceptions import InvalidTag

        with self._lock:
            rows = self._db.execute("SELECT pseudonym, nonce, box FROM vault").fetchall()
        out: dict[str, str] = {}
        for pseudonym, nonce, box in rows:
            try:
                out[pseudonym] = self._aead.decrypt(nonce, box, pseudonym.encode()).decode()
            except InvalidTag as exc:
                raise PIIKeyError(
                    f"the vault {self.path} has an entry that does not open with this key "
                    "(edited, or sealed under another key)"
                ) from exc
        return out

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()


def reveal(value: Any, entries: dict[str, str]) -> Any:
    """``value`` (JSON types) with every pseudonym in ``entries`` put back as its value."""
    if not entries:
        return value
    order = sorted(entries, key=len, reverse=True)

    def text(s: str) -> str:
        for p in order:
            if p in s:
                s = s.replace(p, entries[p])
        return s

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return text(v)
        if isinstance(v, dict):
            return {text(k) if isinstance(k, str) else k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)


def reveal_run(
    run: Run, events: list[Event], vault: str | os.PathLike[str] | None = None
) -> tuple[Run, list[Event]]:
    """Copies of a pseudonymized run and its events with the real values back, from the vault
    the run was recorded with (or ``vault``), under the key from the environment.

    Raises :class:`~replayable.errors.PIIKeyError` when the run was not recorded with
    personal data pseudonymized, when no key is set, or when the key is not the run's."""
    from replayable._pii import META_KEY, key_id, run_key
    from replayable.trace import Event, Run

    settings = run.metadata.get(META_KEY)
    if not isinstance(settings, dict):
        raise PIIKeyError(
            f"run {run.id} was not recorded with pii on: there are no pseudonyms to reveal",
            run_id=run.id,
        )
    key = run_key(run.id, settings, None, "revealing")
    if key_id(key) != settings.get("key_id"):
        raise PIIKeyError(
            f"run {run.id} was pseudonymized under key id {settings.get('key_id')}; the key "
            f"set has id {key_id(key)}: set $REPLAYABLE_PII_KEY to the key it was recorded with",
            run_id=run.id,
        )
    where = vault if vault is not None else settings.get("vault")
    if where is None:
        raise PIIKeyError(
            f"run {run.id} was recorded without a vault (PII(vault=...)): its pseudonyms cannot "
            "be turned back into values",
            run_id=run.id,
        )
    path = Path(where)
    if not path.exists():
        raise PIIKeyError(f"no vault at {path} (run {run.id} names it; pass --vault PATH)")
    box = Vault(path, key, read_only=True)
    try:
        entries = box.entries()
    finally:
        box.close()
    shown = Run.from_dict(reveal(run.to_dict(), entries))
    shown.store = run.store
    return shown, [Event.from_dict(reveal(e.to_dict(), entries)) for e in events]
