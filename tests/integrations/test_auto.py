"""rp.instrument() with no argument: every supported library, imported before or after, in a
fresh interpreter each (instrumenting a library is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp

PRELUDE = """
import json, os, sys
URL = os.environ["FAKE_URL"]
KEY = os.environ["FAKE_KEY"]
def chat(client):
    out = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    return out.choices[0].message.content
"""


def run_script(body: str, tmp_path: Path, server: FakeLLMServer, **env: str) -> Any:
    """Run ``body`` in a fresh interpreter; it prints one JSON line, returned parsed."""
    script = tmp_path / "script.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    full = {**os.environ, "FAKE_URL": server.openai_url, "FAKE_KEY": API_KEY, **env}
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", str(script)],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


class TestEveryLibrary:
    def test_a_library_imported_after_instrumenting_records_and_replays(
        self, tmp_path: Path, server: FakeLLMServer
    ) -> None:
        """rp.instrument() first, import openai later: its clients record and replay offline."""
        out = run_script(
            """
            import replayable as rp
            assert "openai" not in sys.modules
            rp.instrument()
            import openai
            client = openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0)
            with rp.record() as run:
                first = chat(client)
            with rp.replay(run.id):
                again = chat(openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0))
            print(json.dumps({"run": run.id, "same": first == again,
                              "libs": rp.instrument()}))
            """,
            tmp_path,
            server,
        )
        assert out["same"] is True
        assert "openai" in out["libs"]
        assert len(server.requests) == 1
        events = list(rp.open_store(None).iter_events(out["run"]))
        assert [e.boundary for e in events] == ["openai:chat.completions.create"]

    def test_a_library_imported_before_is_instrumented_too(
        self, tmp_path: Path, server: FakeLLMServer
    ) -> None:
        """import openai, then rp.instrument(): clients made afterwards record."""
        out = run_script(
            """
            import openai
            import replayable as rp
            rp.instrument()
            rp.instrument()  # idempotent
            with rp.record() as run:
                chat(openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0))
            print(json.dumps({"run": run.id}))
            """,
            tmp_path,
            server,
        )
        events = list(rp.open_store(None).iter_events(out["run"]))
        assert [e.boundary for e in events] == ["openai:chat.completions.create"]

    def test_the_environment_variable_instruments_at_import(
        self, tmp_path: Path, server: FakeLLMServer
    ) -> None:
        """REPLAYABLE_AUTO_INSTRUMENT=1: importing replayable is enough, for openai and litellm
        imported afterwards."""
        out = run_script(
            """
            import replayable as rp
            import openai, litellm
            with rp.record() as run:
                chat(openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0))
                litellm.completion(model="openai/gpt-4o", api_base=URL, api_key=KEY,
                                   messages=[{"role": "user", "content": "hi"}])
            print(json.dumps({"run": run.id, "libs": rp.instrument()}))
            """,
            tmp_path,
            server,
            REPLAYABLE_AUTO_INSTRUMENT="1",
        )
        assert {"openai", "litellm"} <= set(out["libs"])
        events = list(rp.open_store(None).iter_events(out["run"]))
        top = [e.boundary for e in events if e.parent_seq is None]
        assert top == ["openai:chat.completions.create", "litellm:completion"]

    def test_options_without_an_object_are_refused(self) -> None:
        """rp.instrument(side_effects=...) without an object is a mistake, said clearly."""
        with pytest.raises(TypeError, match="no object"):
            rp.instrument(side_effects=["x"])
