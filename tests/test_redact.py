"""Redaction: every credential shape, in every recorded position, is gone from the bytes on disk;
counts, ids and prose are left alone."""

from __future__ import annotations

import base64
import inspect
import itertools
import json
import random
import re
import string
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable import _writer
from replayable import redact as redact_mod
from replayable.redact import (
    REDACTED,
    Finding,
    find,
    is_secret_key,
    might_hold_secrets,
    redact,
    redact_argv,
    redact_split,
    scrub,
)
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore
from replayable.trace import write_trace

# -- secret shapes ---------------------------------------------------------------------------
# Built at import from a seeded generator, so no credential-looking literal sits in the source.

_rng = random.Random(11)
_ALNUM = string.ascii_letters + string.digits


def _r(n: int, alphabet: str = _ALNUM) -> str:
    body = "".join(_rng.choice(alphabet) for _ in range(n))
    # every body holds a digit and both cases, as real generated credentials do
    return body[:-3] + _rng.choice(string.digits) + "qQ" if alphabet == _ALNUM else body


def _b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _pem(kind: str) -> tuple[str, str]:
    lines = [_r(64, _ALNUM + "+/") for _ in range(6)]
    body = "\n".join(lines)
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----", lines[2]


@dataclass(frozen=True)
class Shape:
    """A credential as it shows up in text, and the part of it that must never be stored."""

    name: str
    text: str
    secret: str


def _shapes() -> list[Shape]:
    pw = _r(10) + "!x"
    jwt = ".".join(
        [
            _b64url({"alg": "HS256", "typ": "JWT"}),
            _b64url({"sub": _r(12), "iat": 1732700000}),
            _r(43, _ALNUM + "-_"),
        ]
    )
    pem, pem_line = _pem("RSA ")
    sa_pem, sa_line = _pem("")
    sa_key_id = _r(40, "0123456789abcdef")
    service_account = json.dumps(
        {
            "type": "service_account",
            "project_id": "acme-prod",
            "private_key_id": sa_key_id,
            "private_key": sa_pem,
            "client_email": "agent@acme-prod.iam.gserviceaccount.com",
        }
    )
    basic_pw = _r(14)
    gh_fine = _r(22) + "_" + _r(59)
    azure = _r(86, _ALNUM + "+/")
    specs = [
        ("openai", "sk-proj-" + (k := _r(48)), k),
        ("anthropic", "sk-ant-api03-" + (k := _r(93, _ALNUM + "-_")) + "AA", k),
        ("aws-access-key-id", "AKIA" + (k := _r(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")), k),
        ("aws-secret-key", "aws_secret_access_key=" + (k := _r(40, _ALNUM + "+/")), k),
        ("gcp-api-key", "AIza" + (k := _r(35, _ALNUM + "-_")), k),
        ("gcp-service-account-json", service_account, sa_line),
        ("gcp-service-account-key-id", service_account, sa_key_id),
        ("github-classic", "ghp_" + (k := _r(36)), k),
        ("github-fine-grained", "github_pat_" + gh_fine, gh_fine),
        ("gitlab", "glpat-" + (k := _r(20)), k),
        (
            "slack-bot",
            "xoxb-" + (k := f"{_r(11, string.digits)}-{_r(13, string.digits)}-{_r(24)}"),
            k,
        ),
        (
            "slack-webhook",
            "https://hooks.slack.com/services/T0"
            + (k := f"{_r(9, string.ascii_uppercase)}/B0{_r(9)}/{_r(24)}"),
            k,
        ),
        (
            "discord-webhook",
            "https://discord.com/api/webhooks/"
            + (k := f"{_r(18, string.digits)}/{_r(68, _ALNUM + '-_')}"),
            k,
        ),
        ("stripe-live", "sk_live_" + (k := _r(24)), k),
        ("stripe-restricted", "rk_live_" + (k := _r(24)), k),
        ("jwt", jwt, jwt.split(".")[1]),
        ("pem-private-key", pem, pem_line),
        (
            "azure-connection-string",
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey="
            + azure
            + "==;EndpointSuffix=core.windows.net",
            azure,
        ),
        ("database-url-password", f"postgresql://app:{pw}@db.internal:5432/prod", pw),
        (
            "query-string-key",
            "https://api.example.com/v1/items?limit=5&api_key=" + (k := _r(32)) + "&page=2",
            k,
        ),
        (
            "query-string-password",
            "https://files.example.com/get?user=bob&password=" + (k := _r(12)),
            k,
        ),
        ("header-authorization-token", "Authorization: Token " + (k := _r(40)), k),
        ("header-x-api-key", "X-Api-Key: " + (k := _r(32)), k),
        ("header-cookie", "Cookie: sessionid=" + (k := _r(32)) + "; theme=dark", k),
        ("huggingface", "hf_" + (k := _r(34, string.ascii_letters)), k),
        ("pypi", "pypi-AgEIcHlwaS5vcmc" + (k := _r(70, _ALNUM + "-_")), k),
        ("npm", "npm_" + (k := _r(36)), k),
        ("bearer", "Bearer " + (k := _r(40)), k),
        (
            "basic-auth",
            "Basic " + base64.b64encode(f"alice:{basic_pw}".encode()).decode(),
            base64.b64encode(f"alice:{basic_pw}".encode()).decode(),
        ),
        ("sendgrid", "SG." + (k := f"{_r(22)}.{_r(43)}"), k),
        ("env-line-password", "DATABASE_PASSWORD=" + (k := _r(16)), k),
    ]
    return [Shape(name, text, secret) for name, text, secret in specs]


SHAPES = _shapes()


def _fragments(secret: str, width: int = 10) -> list[str]:
    """Every ``width``-character window of the secret: "no part of it" means none of these."""
    if len(secret) <= width:
        return [secret]
    return [secret[i : i + width] for i in range(len(secret) - width + 1)]


def assert_absent(secret: str, data: bytes | str, where: str) -> None:
    """No part of ``secret`` is in ``data``."""
    blob = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    # JSON text escapes newlines; a PEM line or a JSON-in-a-string secret may be escaped too
    variants = {blob, blob.replace("\\n", "\n"), blob.replace('\\"', '"').replace("\\\\", "\\")}
    for part in _fragments(secret):
        for v in variants:
            assert part not in v, f"{where}: {part!r} of the secret is still there"


# -- positions -------------------------------------------------------------------------------


@rp.boundary(kind="tool")
def _tool(note: str) -> str:
    return "ok"


@rp.boundary(kind="llm")
def _nested(prompt: str) -> dict[str, Any]:
    return {"choices": [{"message": {"content": prompt, "meta": {"raw": [prompt]}}}]}


@rp.boundary(kind="tool")
def _failing(detail: str) -> None:
    raise RuntimeError(f"upstream refused the request: {detail}")


@rp.boundary(kind="llm")
def _stream(text: str) -> Iterator[str]:
    yield "Here is "
    yield text
    yield " done."


@rp.boundary(kind="tool")
def _annotated(x: int) -> int:
    rp.annotate(request_headers=CURRENT["text"], n=x)
    return x


@rp.boundary(kind="tool")
def _owners(owners: dict[str, str]) -> dict[str, str]:
    return {**owners, "checked": "yes"}


CURRENT: dict[str, str] = {"text": ""}


def _record_position(
    position: str, text: str, store: Any, monkeypatch: pytest.MonkeyPatch
) -> rp.Run:
    """Record one run holding ``text`` in ``position``; returns the run."""
    tags: dict[str, str] = {"team": "support"}
    metadata: dict[str, Any] = {"ticket": 42}
    if position == "tags":
        tags["note"] = text
    elif position == "metadata":
        metadata["context"] = {"detail": [text]}
    elif position == "argv":
        monkeypatch.setattr(sys, "argv", ["agent.py", "--note", text, "--verbose"])
    with rp.record(store, name="secrets", tags=tags, metadata=metadata) as run:
        if position == "argument":
            _tool(f"please use {text} for this")
        elif position == "nested-output":
            _nested(f"the config is:\n{text}\nend")
        elif position == "exception":
            with pytest.raises(RuntimeError):
                _failing(text)
        elif position == "stream-chunk":
            assert "".join(_stream(text)).startswith("Here")
        elif position == "annotate":
            CURRENT["text"] = text
            _annotated(1)
        elif position == "dict-key":
            assert _owners({text: "alice", "ops": "bob"})["checked"] == "yes"
        else:
            _tool("nothing secret here")
    return run


POSITIONS = [
    "argument",
    "nested-output",
    "exception",
    "stream-chunk",
    "annotate",
    "dict-key",
    "tags",
    "metadata",
    "argv",
]


class TestBytesOnDisk:
    @pytest.mark.parametrize("position", POSITIONS)
    @pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
    def test_sqlite_file_wal_and_trace_file_hold_no_part_of_the_secret(
        self, shape: Shape, position: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each secret shape, in each position, is absent from the SQLite file, its WAL and an
        exported trace file."""
        store = SQLiteStore(tmp_path / "s.db")
        run = _record_position(position, shape.text, store, monkeypatch)
        files = sorted(tmp_path.glob("s.db*"))
        assert any(f.name.endswith("-wal") for f in files)
        for f in files:  # read while the store is open: the WAL is still there
            assert_absent(shape.secret, f.read_bytes(), f.name)
        trace = write_trace(store.get_run(run.id), store.iter_events(run.id), tmp_path / "t.jsonl")
        assert_absent(shape.secret, trace.read_bytes(), "trace file")
        store.close()

    @pytest.mark.parametrize("position", POSITIONS)
    def test_postgres_rows_hold_no_part_of_any_secret(
        self, position: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every secret shape, recorded in one position into PostgreSQL, is absent from the rows."""
        store = PostgresStore(pg_url)
        for shape in SHAPES:
            _record_position(position, shape.text, store, monkeypatch)
        rp.flush()  # read behind replayable's back: its writes first
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT row_to_json(r)::text FROM runs r UNION ALL "
                "SELECT row_to_json(e)::text FROM events e"
            ).fetchall()
        store.close()
        dump = "\n".join(r[0] for r in rows)
        assert len(rows) >= 2 * len(SHAPES)
        for shape in SHAPES:
            assert_absent(shape.secret, dump.replace("\\\\n", "\\n"), f"postgres/{shape.name}")


class TestShapes:
    @pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
    def test_scrub_removes_the_secret(self, shape: Shape) -> None:
        """scrub removes every shape from free text and keeps the words around it."""
        out = scrub(f"before\n{shape.text}\nafter")  # a header line runs to its end
        assert_absent(shape.secret, out, shape.name)
        assert out.startswith("before\n")
        assert out.endswith("\nafter")
        assert REDACTED in out

    @pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
    def test_find_names_a_rule_never_the_secret(self, shape: Shape) -> None:
        """find reports a field path and a rule for each shape, with no part of the secret."""
        found = find({"messages": [{"content": shape.text}]})
        assert found
        assert all(f.path == "messages[0].content" for f in found)
        assert_absent(shape.secret, repr(found), shape.name)

    def test_header_keeps_its_name(self) -> None:
        """A header line keeps its name; only the value goes."""
        assert scrub("Authorization: Token abc123def456") == "Authorization: [REDACTED]"
        assert scrub("postgresql://app:pw9x@db/prod") == "postgresql://app:[REDACTED]@db/prod"


class TestSecretKeys:
    @pytest.mark.parametrize(
        "name",
        [
            "api_key",
            "apiKey",
            "X-Api-Key",
            "Authorization",
            "password",
            "client_secret",
            "Set-Cookie",
            "db_password",
            "AccountKey",
            "connection_string",
            "connectionString",
            "database_url",
            "DATABASE_URL",
            "signing_key",
            "encryption_key",
            "access_token",
            "id_token",
            "auth_token",
            "x-auth-token",
            "refresh_token",
            "token",
            "github_token",
        ],
    )
    def test_secret_names(self, name: str) -> None:
        """Whole name parts that say secret are secret, in any case style."""
        assert is_secret_key(name)

    @pytest.mark.parametrize(
        "name",
        [
            "max_tokens",
            "input_tokens",
            "output_tokens",
            "token_usage",
            "token_count",
            "token_type",
            "tokenizer_name",
            "tokens",
            "author",
            "keyboard",
            "key",
            "monkey",
            "url",
            "string",
        ],
    )
    def test_counts_types_and_lookalikes_are_not_secret(self, name: str) -> None:
        """Counts, types and words that merely contain a secret word are not secrets."""
        assert not is_secret_key(name)

    def test_values_under_secret_keys_go(self) -> None:
        """Values under the new secret names are replaced, usage blocks are kept."""
        value = {
            "AccountKey": "abc==",
            "connection_string": "Server=x;Password=y",
            "database_url": "postgresql://u@h/db",
            "signing_key": "k1",
            "encryption_key": 7,
            "response_metadata": {
                "token_usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
            },
            "usage": {"input_tokens": 12, "output_tokens": 3},
            "token_type": "bearer",
            "secret": None,
        }
        out = redact(value)
        for k in (
            "AccountKey",
            "connection_string",
            "database_url",
            "signing_key",
            "encryption_key",
        ):
            assert out[k] == REDACTED, k
        assert out["response_metadata"] == value["response_metadata"]
        assert out["usage"] == value["usage"]
        assert out["token_type"] == "bearer"
        assert out["secret"] is None

    def test_langchain_token_usage_is_stored_as_is(self, store_path: Path) -> None:
        """LangChain's response_metadata.token_usage reaches the store unredacted."""
        usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}

        @rp.boundary(kind="llm")
        def chat(prompt: str) -> dict[str, Any]:
            return {"content": "hi", "response_metadata": {"token_usage": usage, "model_name": "m"}}

        with rp.record() as run:
            chat("hello")
        (ev,) = list(run.events())
        assert ev.output["response_metadata"]["token_usage"] == usage


class TestStreams:
    def test_a_key_streamed_token_by_token_never_reaches_the_disk(self, store_path: Path) -> None:
        """A stream that yields a key in pieces stores no piece of it."""
        key = "sk-proj-" + _r(48)
        pieces = ["Your key is ", key[:5], key[5:17], key[17:40], key[40:], ", keep it safe."]

        @rp.boundary(kind="llm")
        def speak() -> Iterator[str]:
            yield from pieces

        with rp.record() as run:
            assert "".join(speak()) == "".join(pieces)
        (ev,) = list(run.events())
        assert len(ev.output) == len(pieces)
        assert ev.output[0] == "Your key is "
        assert ev.output[-1] == ", keep it safe."
        rp.open_store().close()
        for f in store_path.parent.glob("traces.db*"):
            assert_absent(key[3:], f.read_bytes(), f.name)


class TestArgv:
    def test_flags_named_like_secrets_lose_their_value(self) -> None:
        """--api-key X, --password=X and URLs with passwords are redacted; the rest stays."""
        argv = [
            "agent.py",
            "--api-key",
            "plainvalue",
            "--password=hunter2",
            "--token",
            "abc",
            "--max-tokens",
            "100",
            "--store",
            "postgresql://user:PASSWORD99@db.example.com/traces",
            "--model",
            "gpt-4o",
        ]
        assert redact_argv(argv) == [
            "agent.py",
            "--api-key",
            REDACTED,
            f"--password={REDACTED}",
            "--token",
            REDACTED,
            "--max-tokens",
            "100",
            "--store",
            f"postgresql://user:{REDACTED}@db.example.com/traces",
            "--model",
            "gpt-4o",
        ]

    def test_the_recorded_environment_has_no_key(
        self, store_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`python agent.py --api-key sk-...` does not store the key in the run's environment."""
        key = "sk-" + _r(40)
        monkeypatch.setattr(sys, "argv", ["agent.py", "--api-key", key, "--dsn", "x"])
        with rp.record() as run:
            _tool("hi")
        stored = rp.open_store().get_run(run.id)
        assert stored.environment["argv"] == ["agent.py", "--api-key", REDACTED, "--dsn", "x"]
        rp.open_store().close()
        for f in store_path.parent.glob("traces.db*"):
            assert_absent(key[3:], f.read_bytes(), f.name)

    def test_a_replay_run_does_not_store_the_store_password(
        self, pg_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`replayable replay ... --store postgresql://user:PASSWORD@...`: the replay's run (the
        one the viewer's API shows) holds no password."""
        password = "Pw" + _r(14)
        url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
        with rp.record(url) as run:
            _tool("hi")
        monkeypatch.setattr(sys, "argv", ["replayable", "replay", run.id, "--store", url])
        with rp.replay(run.id, store=url) as r:
            _tool("hi")
        replay_run = rp.open_store(url).get_run(r.run.id)
        assert replay_run.environment["argv"][-1] == url.replace(password, REDACTED)
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT row_to_json(r)::text FROM runs r").fetchall()
        assert_absent(password, "\n".join(x[0] for x in rows), "runs")

    def test_check_and_fuzz_environments_redact_argv_too(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The environment every run kind records (record, replay, check, fuzz) is redacted."""
        from replayable.record import environment

        monkeypatch.setattr(sys, "argv", ["agent.py", "--openai-api-key", "plain"])
        assert environment()["argv"] == ["agent.py", "--openai-api-key", REDACTED]


@pytest.mark.usefixtures("redaction_rules")
class TestUserRules:
    def test_add_pattern_with_keywords(self) -> None:
        """A user pattern redacts its matches, and the byte pre-check learns its keyword."""
        token = "acme_" + _r(32, "0123456789abcdef")
        data = orjson.dumps({"note": f"use {token}"})
        assert not might_hold_secrets(data)
        redact_mod.add_pattern(r"\bacme_[0-9a-f]{32}\b", name="acme-token", keywords=["acme_"])
        assert might_hold_secrets(data)
        assert redact({"note": f"use {token}"}) == {"note": f"use {REDACTED}"}
        assert find({"note": token}) == [redact_mod.Finding("note", "acme-token")]

    def test_add_pattern_without_keywords_runs_everywhere(self) -> None:
        """A pattern with no keyword still applies (the pre-check always says maybe)."""
        redact_mod.add_pattern(r"EMP-(?P<secret>\d{6})", name="employee-id")
        assert might_hold_secrets(b'{"a":"x"}')
        assert scrub("badge EMP-123456 ok") == f"badge EMP-{REDACTED} ok"

    def test_add_key(self) -> None:
        """A user key name is secret as a whole name part, in keys, lines and flags."""
        redact_mod.add_key("ssn")
        assert is_secret_key("customer_ssn")
        assert is_secret_key("SSN")
        assert not is_secret_key("lesson")
        assert might_hold_secrets(orjson.dumps({"customer_ssn": "123-45-6789"}))
        assert redact({"customer_ssn": "123-45-6789"}) == {"customer_ssn": REDACTED}
        assert scrub("ssn=123456789") == f"ssn={REDACTED}"
        assert redact_argv(["x", "--ssn", "1"]) == ["x", "--ssn", REDACTED]


@pytest.mark.usefixtures("redaction_rules")
class TestEngineMeta:
    """A step's metadata the engine wrote itself (``served``, ``source_seq``, stream flags) is
    stored without the secret scan; anything a user could have put there still is scanned."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(sorted(_writer._ENGINE_META)),
            st.one_of(
                st.booleans(),
                st.integers(-(2**63), 2**64 - 1),
                st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
                st.text(max_size=30),
                st.just("sk-proj-" + "a" * 40),
            ),
        )
    )
    def test_stored_as_the_full_path_stores_it(self, meta: dict[str, Any]) -> None:
        """Property: the fast path's bytes are what redaction and the sorted encoding give."""
        from replayable import canonical

        assert _writer._meta_bytes(meta) == canonical.dumps(redact(meta))

    def test_a_secret_annotated_under_an_engine_key_is_redacted(self, tmp_path: Path) -> None:
        """``rp.annotate(served="<a key>")`` puts a string where the engine puts a flag: it is
        scanned and redacted like any annotation."""
        secret = "sk-proj-" + _r(40, string.ascii_letters)

        @rp.boundary(kind="tool")
        def step() -> int:
            rp.annotate(served=secret, stream=[secret])
            return 1

        path = tmp_path / "meta.db"
        store = SQLiteStore(path)
        with rp.record(store=store) as run:
            step()
        ev = next(store.iter_events(run.id))
        assert ev.meta == redact({"served": secret, "stream": [secret]})
        assert REDACTED in ev.meta["served"]
        store.close()
        assert secret.encode() not in path.read_bytes()

    def test_a_user_key_rule_on_an_engine_key_applies(self) -> None:
        """A user rule naming an engine key (absurd, but the rules are the user's) turns the
        fast path off: the value under it is redacted."""
        assert redact_mod.names_clean(_writer._ENGINE_META)
        assert _writer._meta_bytes({"source_seq": 3}) == b'{"source_seq":3}'
        redact_mod.add_key("source_seq")
        assert not redact_mod.names_clean(_writer._ENGINE_META)
        assert _writer._meta_bytes({"source_seq": 3}) == b'{"source_seq":"[REDACTED]"}'


# -- properties ------------------------------------------------------------------------------

_SHAPE = st.sampled_from(SHAPES)
_KEYS = st.sampled_from(
    [
        "max_tokens",
        "tokens",
        "token",
        "tokenId",
        "token_usage",
        "token_type",
        "access_token",
        "author",
        "auth",
        "passport",
        "password",
        "PASSWORD",
        "apiKey",
        "api-key",
        "secretary",
        "client_secret",
        "cookies",
        "Cookie",
        "credentials",
        "usage",
        "content",
        "pwd",
        "oauth",
        "name",
        "access__key",
        "api::key",
        "private-------key",
        "AccountKey",
        "database_url",
    ]
) | st.text(max_size=12)
_VALUES = st.recursive(
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=30)
    | _SHAPE.map(lambda s: s.text)
    | st.sampled_from(
        [
            "Bearer abcdefgh1234",
            "sk-ABCDEFGHIJKLMNOPQRSTU",
            "basic dXNlcjpwYXNz",
            "Basic\tdXNlcjpwYXNz",
            "Basic\u00a0dXNlcjpwYXNz",
            "baſic dXNlcjpwYXNz",
            "token: abc123",
            "token_count: 12345678",
            "x://u:p@h",
        ]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


class TestProperties:
    @given(_VALUES)
    @settings(max_examples=300)
    def test_redaction_is_idempotent(self, value: Any) -> None:
        """Property: redacting twice changes nothing more than redacting once."""
        once = redact(value)
        assert redact(once) == once
        assert find(once) == []

    @given(st.dictionaries(_KEYS, _VALUES, max_size=6))
    @settings(max_examples=300)
    def test_a_negative_pre_check_means_nothing_to_redact(self, value: dict[str, Any]) -> None:
        """Property: when the byte-level pre-check says no, redaction would change nothing."""
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        if not might_hold_secrets(data):
            assert redact(value) == value

    @given(
        _VALUES,
        st.lists(
            st.sampled_from([b"-0", b'"request_id":', b'"Trace_Id":', b"key", b"ghp_", b"Lyon"]),
            max_size=4,
        ).map(tuple),
    )
    @settings(max_examples=300)
    def test_one_pass_gives_the_pre_check_and_the_words(
        self, value: Any, words: tuple[bytes, ...]
    ) -> None:
        """Property: might_hold_secrets_or says what might_hold_secrets says of the bytes (once
        that is no) and finds a word whenever one occurs in them: a no means none does."""
        data = orjson.dumps({"v": value, "extra": [w.decode() for w in words[:1]]})
        secrets, found = redact_mod.might_hold_secrets_or(data, words)
        assert secrets == might_hold_secrets(data)
        if not secrets:
            assert found == any(w.lower() in data.lower() for w in words)
            if any(w in data for w in words):
                assert found

    @given(
        st.dictionaries(
            st.sampled_from(
                [
                    "max_tokens",
                    "token_usage",
                    "token_count",
                    "token_type",
                    "input_tokens",
                    "output_tokens",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "usage",
                ]
            ),
            st.recursive(
                st.integers() | st.sampled_from(["bearer", "Bearer", "json", "cl100k_base"]),
                lambda inner: st.dictionaries(
                    st.sampled_from(["input_tokens", "output_tokens", "token_count"]), inner
                ),
                max_leaves=5,
            ),
        )
    )
    def test_count_and_type_keys_are_never_redacted(self, value: dict[str, Any]) -> None:
        """Property: token counts, usage blocks and token types come back unchanged."""
        assert redact(value) == value

    def test_usage_blocks_do_not_trigger_a_redaction_pass(self) -> None:
        """Counts and token types are not secrets, so the byte pre-check lets them through."""
        usage = {
            "max_tokens": 5,
            "usage": {"prompt_tokens": 1, "total_tokens": 2},
            "response_metadata": {"token_usage": {"completion_tokens": 3}},
            "token_count": 4,
            "tokenId": 9,
        }
        assert not might_hold_secrets(orjson.dumps(usage))
        assert might_hold_secrets(orjson.dumps({"accessToken": "x"}))
        assert might_hold_secrets(orjson.dumps({"x-auth-token": "x"}))

    @given(
        _SHAPE,
        st.text(max_size=40),
        st.text(max_size=40),
        st.sampled_from([" ", "\n", "\t", " | "]),
    )
    @settings(max_examples=300)
    def test_a_secret_embedded_in_any_text_is_removed(
        self, shape: Shape, before: str, after: str, sep: str
    ) -> None:
        """Property: a secret between separators in arbitrary text never survives redaction."""
        text = f"{before}{sep}{shape.text}{sep}{after}"
        out = redact({"messages": [{"content": text}]})["messages"][0]["content"]
        assert_absent(shape.secret, out, shape.name)

    @given(_SHAPE, st.text(max_size=20), st.lists(st.integers(0, 10_000), max_size=6))
    @settings(max_examples=300)
    def test_a_secret_split_across_stream_chunks_is_removed(
        self, shape: Shape, before: str, cuts: list[int]
    ) -> None:
        """Property: a secret streamed in pieces (cut anywhere) is gone from the chunks."""
        text = f"{before} {shape.text} done"
        points = sorted({c % (len(text) + 1) for c in cuts})
        chunks = [text[a:b] for a, b in itertools.pairwise([0, *points, len(text)])]
        out = redact(redact_split(chunks))
        assert len(out) == len(chunks)
        assert_absent(shape.secret, "".join(out), shape.name)
        assert_absent(shape.secret, "\x00".join(out), shape.name)

    @given(
        st.lists(_SHAPE, min_size=1, max_size=4, unique_by=lambda s: s.text),
        st.dictionaries(_KEYS | st.sampled_from(["[REDACTED:1]", "[REDACTED:2]"]), _VALUES),
        st.randoms(use_true_random=False),
    )
    @settings(max_examples=200)
    def test_a_secret_used_as_a_dict_key_is_replaced_and_nothing_merges(
        self, shapes: list[Shape], plain: dict[str, Any], rnd: random.Random
    ) -> None:
        """Property: a dict key holding a credential becomes a [REDACTED:N] marker; no part of
        it survives, no two entries merge, every value is kept (redacted as values are), other
        keys stay, the order the dict was built in does not matter, and it is idempotent."""
        value: dict[str, Any] = {s.text: i for i, s in enumerate(shapes)}
        value.update(plain)
        once = redact({"by_key": value})["by_key"]
        blob = orjson.dumps(once).decode()
        for s in shapes:
            assert_absent(s.secret, blob, s.name)
        assert len(once) == len(value)
        assert all(re.fullmatch(r"\[REDACTED:\d+\]", k) for k in once if k not in plain)
        kept = [REDACTED if is_secret_key(s.text) else i for i, s in enumerate(shapes)]
        assert sorted(map(str, kept)) == sorted(str(v) for k, v in once.items() if k not in plain)
        for k, v in plain.items():
            assert once[k] == redact({k: v})[k]
        items = list(value.items())
        rnd.shuffle(items)
        assert redact(dict(items)) == once
        assert redact(once) == once
        assert find(once) == []

    def test_find_names_a_secret_key_by_its_marker(self) -> None:
        """scan's findings for a secret used as a key name the marker and the rule, never it."""
        shape = next(s for s in SHAPES if s.name == "github-classic")
        found = find({"users": {shape.text: "alice"}}, "input")
        assert found == [Finding("input.users.[REDACTED:1]", "github-token")]

    @given(st.text(max_size=30), st.text(max_size=30))
    def test_harmless_values_untouched(self, a: str, b: str) -> None:
        """Property: values with no secret key and no secret shape come back unchanged."""
        value = {"max_tokens": 5, "model": "gpt-4o", "n": [1, 2], "id": str(uuid.UUID(int=len(a)))}
        assert redact(value) == value


# -- false positives -------------------------------------------------------------------------


def _corpus() -> list[str]:
    """Realistic recorded strings with no credential: stdlib docstrings (prose, code, URLs,
    examples), ids (UUIDs, hex, git SHAs, sha256, base64 digests) and chat-style text."""
    import collections
    import email
    import http.client
    import json as json_mod
    import logging
    import os
    import pathlib
    import subprocess
    import urllib.parse

    texts: list[str] = []
    for mod in (
        collections,
        email,
        http.client,
        json_mod,
        logging,
        os,
        pathlib,
        subprocess,
        urllib.parse,
        re,
        inspect,
    ):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc:
                texts.extend(p for p in doc.split("\n\n") if p.strip())
    rnd = random.Random(5)
    for _ in range(500):
        texts.append(str(uuid.UUID(int=rnd.getrandbits(128))))
        texts.append(f"{rnd.getrandbits(160):040x}")  # git SHA
        texts.append(f"{rnd.getrandbits(256):064x}")  # sha256
        texts.append(f"order {rnd.randint(1, 10**9)} for customer cus_{rnd.getrandbits(48):x}")
        texts.append(base64.b64encode(rnd.randbytes(24)).decode())
        texts.append(f"chatcmpl-{rnd.getrandbits(64):x}")
        texts.append(f"https://example.com/api/v1/orders/{rnd.randint(1, 10**6)}?limit=20&page=3")
    texts += [
        "A basic introduction to Python for the bearer of bad news.",
        "max_tokens=1024, temperature=0.2, token_count: 12345678",
        "Use sk-learn-compatible-estimators for the baseline.",
        "The token limit was reached; the author will retry with fewer tokens.",
        "response_metadata token_usage prompt_tokens=12 completion_tokens=3",
        "Set the password field in the settings page, then press Save.",
        "Your API key is shown once on the dashboard.",
        "key: value, monkey: banana, keyboard: qwerty",
    ]
    return texts


class TestFalsePositives:
    @pytest.mark.parametrize(
        "text",
        [
            "123e4567-e89b-12d3-a456-426614174000",
            "3f786850e387550fdab836ed7e6dc881de23001b",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "req_8f14e45fceea167a5a36dedd4bea2543",
            "A basic introduction to Python for the bearer of bad news.",
            "max_tokens=1024, temperature=0.2, token_count: 12345678",
            "Use sk-learn-compatible-estimators for the baseline.",
            "The token limit was reached; the author will retry with fewer tokens.",
            "Set the password field in the settings page, then press Save.",
            "https://example.com/api/v1/orders/42?limit=20&page=3",
            "git@github.com:acme/agent.git",
        ],
    )
    def test_ordinary_values_are_kept(self, text: str) -> None:
        """Prose, UUIDs, hex ids, git SHAs and plain URLs in normal fields are not redacted."""
        assert scrub(text) == text
        assert redact({"id": text, "note": [text]}) == {"id": text, "note": [text]}

    def test_false_positive_rate_on_a_realistic_sample_is_low(self) -> None:
        """Under 0.5% of a few thousand realistic secret-free strings change at all."""
        corpus = _corpus()
        changed = [t for t in corpus if scrub(t) != t]
        assert len(corpus) > 3000
        assert len(changed) / len(corpus) < 0.005, changed[:10]
