"""The writer's rows: a call with nothing to redact takes a short path that must make the very
row (bytes, key, hash chain) the whole redaction path makes."""

from __future__ import annotations

import dataclasses
import string
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable._writer import Pending, _redacted_row, pending_row
from replayable.boundary import Boundary
from replayable.store.base import EventRow


def _call(**kwargs: Any) -> Any:
    return kwargs


_PLAIN = rp.boundary(kind="llm", name="writer:plain")(_call).__replayable__
_RULED = rp.boundary(kind="llm", name="writer:ruled", redact=["note"])(_call).__replayable__

_ALNUM = string.ascii_letters + string.digits


def _tail(n: int, alphabet: str = _ALNUM) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=n, max_size=n)


# Credential shapes built from random parts (no credential-looking literal in the source):
# (the text, the part of it that must never be stored).
_PLANTED = st.one_of(
    _tail(36).map(lambda t: ("ghp_" + t, t)),
    _tail(16, string.ascii_uppercase + "234567").map(lambda t: ("AKIA" + t, t)),
    _tail(48).map(lambda t: ("sk-proj-" + t, t)),
    _tail(12).map(lambda t: ("password=" + t + "!x9", t)),
    _tail(30).map(lambda t: ("Authorization: Bearer " + t, t)),
    _tail(10).map(lambda t: (f"postgres://app:{t}9Q@db.internal/main", t + "9Q")),
)
_SECRETS = _PLANTED.map(lambda planted: planted[0])
_WORDS = st.sampled_from(
    ["refund", "max_tokens", "token_count", "the key", "url", "auth", "tokens", "Lyon", "-0.0"]
)
# what keying looks for before sorting an input's bytes as they are (and near-misses)
_KEYING = st.sampled_from(["-0", "request_id", '"trace_id":', "Span_Id"])
_TEXT = st.lists(st.one_of(_WORDS, _KEYING, _SECRETS, st.text(max_size=12)), max_size=6).map(
    " ".join
)
_KEYS = st.sampled_from(
    ["content", "role", "note", "api_key", "password", "usage", "total_tokens", "$dict", "1"]
) | st.sampled_from(["request_id", "trace_id", "Created_At", "timestamps"])
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(-1e6, 1e6)
    | st.sampled_from([-0.0, -0.5, -1e-7])
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=10,
)
_META = st.sampled_from([{}, {"stream": True}, {"served": False}, {"note": "x"}])


def _pending(
    b: Boundary,
    inp: Any,
    out: Any,
    meta: dict[str, Any],
    error: dict[str, Any] | None,
    limit: int = 0,
) -> Pending:
    return Pending(
        "run-1",
        3,
        f"{b.name}/3",
        None,
        b,
        orjson.dumps({"messages": inp}),
        orjson.dumps(out),
        error,
        meta,
        1_700_000_000.25,
        1_234,
        max_value_bytes=limit,
    )


def _both(p: Pending) -> tuple[EventRow, EventRow, dict[str, Any], dict[str, Any]]:
    """(pending_row's row, the whole path's row, and each one's chains after)."""
    twin = dataclasses.replace(p, meta=dict(p.meta))
    fast: dict[str, Any] = {"run-1": (7, "ab" * 32)}
    whole: dict[str, Any] = {"run-1": (7, "ab" * 32)}
    return pending_row(p, fast), _redacted_row(twin, whole, None, None), fast, whole


class TestShortPath:
    @given(
        inp=_JSON,
        out=_JSON,
        meta=_META,
        error=st.none() | st.just({"type": "ValueError", "message": "bad"}),
        ruled=st.booleans(),
        limit=st.sampled_from([0, 64]),
    )
    @settings(max_examples=400, deadline=None)
    def test_every_call_gets_the_row_the_whole_path_makes(
        self,
        inp: Any,
        out: Any,
        meta: dict[str, Any],
        error: dict[str, Any] | None,
        ruled: bool,
        limit: int,
    ) -> None:
        """Property: with secrets' shapes planted anywhere in the input or output, the row
        pending_row stores (and the chain it extends) is the whole redaction path's, byte for
        byte: the short path is taken only where redaction would change nothing."""
        p = _pending(_RULED if ruled else _PLAIN, inp, out, meta, error, limit)
        row, expected, chains, expected_chains = _both(p)
        assert row == expected
        assert chains == expected_chains

    @given(planted=_PLANTED, where=st.sampled_from(["input", "output", "both"]))
    @settings(max_examples=100, deadline=None)
    def test_a_planted_secret_never_reaches_the_row(
        self, planted: tuple[str, str], where: str
    ) -> None:
        """Property: a credential in a plain call's input or output is stored redacted (the
        short path gives way to redaction)."""
        secret, part = planted
        text = f"please use {secret} for the refund"
        inp = [{"role": "user", "content": text if where != "output" else "hello"}]
        out = {"content": text if where != "input" else "done"}
        row = pending_row(_pending(_PLAIN, inp, out, {}, None), {})
        stored = (row.input or "") + (row.output or "")
        assert "[REDACTED]" in stored
        assert part not in stored

    def test_a_plain_call_keeps_the_key_and_hash_it_had(self) -> None:
        """A 1 KB call with nothing to redact is stored as snapshotted, under the key and event
        hash the writer gave it before the short path (computed with the earlier code): runs
        recorded before replay and verify."""
        text = "customer asked about the refund policy for orders shipped after the sale " * 13
        inp = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
        out = {"id": "chatcmpl-1", "choices": [{"message": {"content": text}}], "usage": {}}
        p = _pending(_PLAIN, inp, out, {}, None)
        row = pending_row(p, {"run-1": (7, "ab" * 32)})
        assert row.input == p.input.decode()
        assert row.output == p.output.decode()
        assert (row.meta, row.error, row.chain_seq) == ("{}", None, 7)
        assert row.key == "e466db158754f4bb08e8a3f40cb851d198a21c9c03897b903845cb319e3d2710"
        assert row.hash == "a173f82a7695231b260b3b89e2b45ced570af96e9f0d5a85d55cd0ad7697f998"
