"""Redaction: secrets are removed by whole key-name part and by value shape, never more."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

import replayable as rp
from replayable.redact import REDACTED, is_secret_key, might_hold_secrets, redact


class TestSecretKeys:
    def test_secret_names(self) -> None:
        """Whole name parts that say secret are secret, in any case style."""
        for name in (
            "api_key",
            "apiKey",
            "X-Api-Key",
            "Authorization",
            "password",
            "access_token",
            "client_secret",
            "Set-Cookie",
            "db_password",
        ):
            assert is_secret_key(name), name

    def test_lookalikes_are_not_secret(self) -> None:
        """max_tokens, input_tokens, author and keyboard are not secrets."""
        for name in (
            "max_tokens",
            "input_tokens",
            "output_tokens",
            "author",
            "keyboard",
            "tokenizer_name",
            "key",
            "monkey",
        ):
            assert not is_secret_key(name), name

    def test_nested_and_usage_preserved(self) -> None:
        """Redaction walks nested data but keeps usage counts and numbers intact."""
        value = {
            "headers": {"authorization": "Bearer abc.def.ghi", "accept": "json"},
            "usage": {"input_tokens": 12, "output_tokens": 3},
            "max_tokens": 100,
            "pin_password": 1234,
            "secret": None,
            "config": [{"password": "hunter2"}],
        }
        out = redact(value)
        assert out["headers"] == {"authorization": REDACTED, "accept": "json"}
        assert out["usage"] == {"input_tokens": 12, "output_tokens": 3}
        assert out["max_tokens"] == 100
        assert out["pin_password"] == REDACTED
        assert out["secret"] is None
        assert out["config"] == [{"password": REDACTED}]


class TestSecretValues:
    def test_key_and_bearer_strings_scrubbed_anywhere(self) -> None:
        """sk- keys and bearer tokens are scrubbed inside free text."""
        text = "call with sk-proj-ABCDEFGHIJKLMNOPQRSTUV and header Bearer eyJhbGciOi.xyz123"
        out = redact({"note": text})["note"]
        assert "sk-proj" not in out
        assert "eyJhbGciOi" not in out
        assert out.count(REDACTED) == 2

    def test_user_redactors_run_on_top(self) -> None:
        """A user redactor sees the already-redacted value and can remove more."""

        def drop_ssn(value: Any) -> Any:
            return {k: v for k, v in value.items() if k != "ssn"}

        assert redact({"ssn": "123", "password": "x"}, redactors=[drop_ssn]) == {
            "password": REDACTED
        }

    @given(
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            min_size=20,
            max_size=40,
        ),
        st.text(max_size=30),
    )
    def test_sk_keys_never_survive(self, secret: str, filler: str) -> None:
        """Property: an sk- key embedded in any text never survives redaction."""
        value = {"messages": [{"content": f"{filler} sk-{secret} {filler}"}]}
        assert f"sk-{secret}" not in str(redact(value))

    @given(
        st.dictionaries(
            st.sampled_from(["max_tokens", "temperature", "model", "n"]),
            st.integers() | st.text(alphabet="abc xyz", max_size=10),
        )
    )
    def test_harmless_values_untouched(self, value: dict[str, Any]) -> None:
        """Property: values with no secret key and no secret shape come back unchanged."""
        assert redact(value) == value


_KEYS = st.sampled_from(
    [
        "max_tokens",
        "tokens",
        "token",
        "tokenId",
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
    ]
) | st.text(max_size=12)
_VALUES = st.recursive(
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "Bearer abcdefgh1234",
            "sk-ABCDEFGHIJKLMNOPQRSTU",
            "basic dXNlcjpwYXNz",
            "Basic\tdXNlcjpwYXNz",
            "Basic\u00a0dXNlcjpwYXNz",
            "baſic dXNlcjpwYXNz",
        ]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


class TestPreCheck:
    @given(st.dictionaries(_KEYS, _VALUES, max_size=6))
    def test_a_negative_pre_check_means_nothing_to_redact(self, value: dict[str, Any]) -> None:
        """Property: when the byte-level pre-check says no, redaction would change nothing."""
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        if not might_hold_secrets(data):
            assert redact(value) == value

    def test_usage_blocks_do_not_trigger_a_redaction_pass(self) -> None:
        """max_tokens and usage.*_tokens are not secrets, so the pre-check lets them through."""
        usage = {"max_tokens": 5, "usage": {"prompt_tokens": 1, "total_tokens": 2}}
        assert not might_hold_secrets(orjson.dumps(usage))
        assert might_hold_secrets(orjson.dumps({"accessToken": "x"}))
        assert might_hold_secrets(orjson.dumps({"tokenId": "x"}))


class TestRedactionInRecordings:
    def test_secrets_never_reach_the_store_or_the_key(self, store_path: Any) -> None:
        """A recorded call's api_key is not in the SQLite file, and does not change the key."""

        @rp.boundary(kind="llm")
        def ask(prompt: str, api_key: str) -> str:
            return f"answer to {prompt}"

        with rp.record() as run:
            ask("hi", api_key="sk-live-SUPERSECRETKEY1234567890")
        with rp.record() as run2:
            ask("hi", api_key="sk-live-OTHERSECRETKEY1234567890")
        rp.open_store().close()
        raw = b"".join(p.read_bytes() for p in store_path.parent.glob("traces.db*"))
        assert b"SUPERSECRETKEY" not in raw
        assert b"OTHERSECRETKEY" not in raw
        (ev1,) = list(run.events())
        (ev2,) = list(run2.events())
        assert ev1.input == {"prompt": "hi", "api_key": REDACTED}
        assert ev1.key == ev2.key
