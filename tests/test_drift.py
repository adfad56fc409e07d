"""Drift: recorded model calls re-run live, alone, and what changed reported per step."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.boundary import _REGISTRY
from replayable.cli import main
from replayable.demo import agent as demo
from replayable.integrations.openai import instrument
from replayable.testing import Verdict

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": {"order": {"type": "integer"}}},
        },
    }
    for name in ("lookup_order", "cancel_order")
]
PROMPTS = ["where is order 7?", "please cancel order 7", "is order 7 shipped?", "cancel 7 now"]
TOOL_CALLS: list[str] = []
CLIENT: dict[str, Any] = {}


class Exact:
    """A judge that passes equal texts only (the embedding judge is tested elsewhere)."""

    def judge(self, candidate: str, reference: str, criteria: str | None = None) -> Verdict:
        same = candidate == reference
        return Verdict(same, float(same), "equal" if same else "differs", candidate, reference)


OPENED: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every client a test opened is closed after it (no socket left for the GC to find)."""
    yield
    while OPENED:
        OPENED.pop().close()


def client_for(server: FakeLLMServer) -> Any:
    """A real OpenAI client on the loopback server, instrumented (the registered boundary)."""
    client = openai.OpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
    OPENED.append(client)
    return instrument(client)


@rp.boundary(kind="tool", side_effects=True)
def cancel_order(db: str, order: int) -> int:
    TOOL_CALLS.append("cancel_order")
    with sqlite3.connect(db) as conn:
        return conn.execute("DELETE FROM orders WHERE id = ?", (order,)).rowcount


@rp.boundary(kind="tool")
def lookup_order(order: int) -> dict[str, Any]:
    TOOL_CALLS.append("lookup_order")
    return {"order": order, "status": "shipped"}


@rp.boundary(kind="agent")
def order_agent(db: str, prompt: str) -> Any:
    resp = CLIENT["openai"].chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": prompt}], tools=TOOLS
    )
    call = resp.choices[0].message.tool_calls[0]
    args = json.loads(call.function.arguments)
    if call.function.name == "cancel_order":
        return cancel_order(db, args["order"])
    return lookup_order(args["order"])


def always_lookup(prompt: str, tools: list[str]) -> tuple[str, dict[str, Any]]:
    return "lookup_order", {"order": 7}


def cancels_when_asked(prompt: str, tools: list[str]) -> tuple[str, dict[str, Any]]:
    return ("cancel_order" if "cancel" in prompt else "lookup_order"), {"order": 7}


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "orders.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO orders VALUES (?)", [(i,) for i in range(1, 10)])
    return str(path)


def orders(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])


@pytest.fixture
def last_week(db: str) -> list[rp.Run]:
    """Four runs recorded against last week's model: fingerprint fp_old, always looks up."""
    old = FakeLLMServer(seed=1, fingerprint="fp_old", steer=always_lookup).start()
    CLIENT["openai"] = client_for(old)
    runs = []
    for prompt in PROMPTS:
        with rp.record(name="orders") as run:
            order_agent(db, prompt)
        runs.append(run)
    old.stop()
    TOOL_CALLS.clear()
    return runs


class TestOpenAIDrift:
    def test_names_exactly_the_steps_and_fields_that_changed(
        self, last_week: list[rp.Run], db: str
    ) -> None:
        """A new fingerprint on every step, a new tool only where today's model cancels."""
        today = FakeLLMServer(seed=2, fingerprint="fp_new", steer=cancels_when_asked).start()
        try:
            client_for(today)
            report = rp.drift(name="orders", judge=Exact())
        finally:
            today.stop()
        assert len(today.requests) == 4
        by_run = {s.run_id: s for s in report.steps}
        assert [by_run[r.id].step for r in last_week] == ["create#1"] * 4
        fields = {r.id: [c.field for c in by_run[r.id].changes] for r in last_week}
        assert fields == {
            last_week[0].id: ["system_fingerprint"],
            last_week[1].id: ["system_fingerprint", "tool"],
            last_week[2].id: ["system_fingerprint"],
            last_week[3].id: ["system_fingerprint", "tool"],
        }
        tool = next(c for c in by_run[last_week[1].id].changes if c.field == "tool")
        assert (tool.recorded, tool.live) == (["lookup_order"], ["cancel_order"])
        summary = report.summary()["openai:chat.completions.create"]
        assert summary == {
            "calls": 4,
            "drifted": 4,
            "not_rerun": 0,
            "fields": {"system_fingerprint": 4, "tool": 2},
        }

    def test_nothing_but_the_model_call_runs(self, last_week: list[rp.Run], db: str) -> None:
        """Drift never calls a tool, even where today's model would cancel the order."""
        today = FakeLLMServer(seed=3, fingerprint="fp_old", steer=cancels_when_asked).start()
        try:
            client_for(today)
            rp.drift([r.id for r in last_week], judge=Exact())
        finally:
            today.stop()
        assert TOOL_CALLS == []
        assert orders(db) == 9

    def test_same_model_same_answers_is_no_drift(self, last_week: list[rp.Run]) -> None:
        """Today's model answering as last week's: every step 'same'."""
        today = FakeLLMServer(seed=4, fingerprint="fp_old", steer=always_lookup).start()
        try:
            client_for(today)
            report = rp.drift(name="orders", judge=Exact())
        finally:
            today.stop()
        assert [s.status for s in report.steps] == ["same"] * 4
        assert not report.drifted


class TestStreams:
    def test_a_streamed_call_is_compared_on_its_folded_answer(self, db: str) -> None:
        """A stream=True call: fingerprint from its chunks, the tool from its deltas."""
        old = FakeLLMServer(seed=1, fingerprint="fp_old", steer=always_lookup).start()
        client = client_for(old)
        with rp.record(name="streamed") as run:
            stream = client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "cancel order 7"}],
                tools=TOOLS,
                stream=True,
            )
            list(stream)
        old.stop()
        today = FakeLLMServer(seed=2, fingerprint="fp_new", steer=cancels_when_asked).start()
        try:
            client_for(today)
            (step,) = rp.drift(run.id, judge=Exact()).steps
        finally:
            today.stop()
        assert step.boundary == "openai:chat.completions.create_stream"
        assert [(c.field, c.recorded, c.live) for c in step.changes] == [
            ("system_fingerprint", "fp_old", "fp_new"),
            ("tool", ["lookup_order"], ["cancel_order"]),
        ]


class TestFromPython:
    def test_drift_works_from_async_code_and_takes_a_timedelta(self) -> None:
        """Called where an event loop already runs, drift runs its own loop beside it."""
        import datetime

        @rp.boundary(kind="llm", name="drift_test:echo")
        def echo(text: str) -> str:
            return text

        with rp.record(name="echo"):
            echo("hi")

        async def main() -> rp.DriftReport:
            return rp.drift(name="echo", since=datetime.timedelta(hours=1), judge=None)

        report = asyncio.run(main())
        assert [s.status for s in report.steps] == ["same"]


ANSWER: dict[str, Any] = {}


@rp.boundary(kind="llm", name="drift_test:answer")
def answer(question: str) -> Any:
    """A model call whose answer is whatever the test set last."""
    return ANSWER["now"]


class TestEveryAnswerShape:
    @pytest.mark.parametrize(
        ("before", "after", "expected"),
        [
            (12, 13, "value: 12 -> 13"),
            (True, False, "value: true -> false"),
            (None, 0, "value: null -> 0"),
            (1.5, 2.5, "value: 1.5 -> 2.5"),
            ([1, 2], [1, 3], "value: [1]: 2 -> 3"),
            ({"total": 12}, {"total": 13}, "value: total: 12 -> 13"),
            ({"text": "hi", "n": 1}, {"text": "hi", "n": 2}, "value: n: 1 -> 2"),
        ],
        ids=["int", "bool", "none", "float", "list", "dict", "dict-beside-text"],
    )
    def test_a_changed_answer_is_reported_whatever_its_shape(
        self, before: Any, after: Any, expected: str
    ) -> None:
        """A model whose answer changed from 12 to 13 (or any other non-SDK shape): the drift
        report names the changed answer, not only that something about the model moved."""
        ANSWER["now"] = before
        with rp.record(name="shapes"):
            answer("how many?")
        ANSWER["now"] = after
        report = rp.drift(name="shapes", judge=None, limit=1)
        [step] = report.steps
        assert step.status == "drifted"
        assert expected in [str(c) for c in step.changes]

    def test_the_same_answer_is_no_drift(self) -> None:
        """An unchanged bare answer reports no change (the value field is not noise)."""
        ANSWER["now"] = 12
        with rp.record(name="same-shape"):
            answer("how many?")
        report = rp.drift(name="same-shape", judge=None, limit=1)
        assert [s.status for s in report.steps] == ["same"]

    def test_a_changed_text_field_is_not_reported_twice(self) -> None:
        """A dict answer whose text field changed shows as text only, not again as value."""
        ANSWER["now"] = {"text": "yes"}
        with rp.record(name="text-shape"):
            answer("ok?")
        ANSWER["now"] = {"text": "no"}
        report = rp.drift(name="text-shape", judge=None, limit=1)
        [step] = report.steps
        assert [c.field for c in step.changes] == ["text"]

    def test_an_input_whose_keys_collide_is_re_sent_whole(self) -> None:
        """A model call recorded with a dict whose keys collide as strings is re-run with that
        dict whole (both keys, their types), so an unchanged model is no drift."""
        seen: list[dict[Any, str]] = []

        @rp.boundary(kind="llm", name="tests.drift:by_id")
        def by_id(options: dict[Any, str]) -> str:
            seen.append(options)
            return ",".join(f"{type(k).__name__}:{v}" for k, v in options.items())

        with rp.record(name="collide"):
            by_id({1: "a", "1": "b"})
        report = rp.drift(name="collide", judge=None, limit=1)
        assert [s.status for s in report.steps] == ["same"]
        assert seen[-1] == {1: "a", "1": "b"}
        assert [type(k) for k in seen[-1]] == [int, str]


class TestNotRerunnable:
    def test_an_unregistered_boundary_is_reported_per_step(
        self, last_week: list[rp.Run], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No client configured: each step says it was not re-run, and why."""
        monkeypatch.delitem(_REGISTRY, "openai:chat.completions.create")
        report = rp.drift(last_week[0].id)
        (step,) = report.steps
        assert step.status == "not_rerun"
        assert "no client configured" in step.reason
        assert "not re-run" in report.report()

    def test_a_nested_call_the_recording_cannot_serve_stops_the_step(self) -> None:
        """A model call that now calls a tool with another input is not run past it."""
        state = {"q": "a"}

        @rp.boundary(kind="tool", name="drift_test:search")
        def search(q: str) -> list[str]:
            return [q]

        @rp.boundary(kind="llm", name="drift_test:think")
        def think(topic: str) -> str:
            return f"{topic}: {search(state['q'])[0]}"

        with rp.record(name="nested") as run:
            think("x")
        assert rp.drift(run.id, judge=None).steps[0].status == "same"
        state["q"] = "b"
        step = rp.drift(run.id, judge=None).steps[0]
        assert step.status == "not_rerun"
        assert "drift_test:search" in step.reason

    def test_a_blocked_nested_call_counts_even_when_the_model_code_catches_it(self) -> None:
        """A model function that swallows errors cannot hide that drift could not re-run it."""
        state = {"q": "a"}

        @rp.boundary(kind="tool", name="drift_test:fetch")
        def fetch(q: str) -> str:
            return q

        @rp.boundary(kind="llm", name="drift_test:careless")
        def careless(topic: str) -> str:
            try:
                return fetch(state["q"])
            except Exception:
                return "fallback"

        with rp.record(name="careless") as run:
            careless("x")
        state["q"] = "b"
        step = rp.drift(run.id, judge=None).steps[0]
        assert step.status == "not_rerun"
        assert "drift_test:fetch" in step.reason


class TestConcurrency:
    def test_async_model_calls_run_concurrently_up_to_the_bound(self) -> None:
        """Four async calls that each wait for the other three all finish with concurrency=4."""
        gate: dict[str, Any] = {}

        @rp.boundary(kind="llm", name="drift_test:together")
        async def together(n: int) -> str:
            if "barrier" in gate:
                await asyncio.wait_for(gate["barrier"].wait(), timeout=5)
            return f"answer {n}"

        runs = []
        for n in range(4):
            with rp.record(name="together") as run:
                asyncio.run(together(n))
            runs.append(run.id)

        async def make() -> None:
            gate["barrier"] = asyncio.Barrier(4)

        asyncio.run(make())
        report = rp.drift(runs, judge=None, concurrency=4)
        assert [s.status for s in report.steps] == ["same"] * 4


class TestDemoAndCli:
    def record_demo(self, n: int) -> list[str]:
        ids = []
        for _ in range(n):
            demo.reset_db()
            with rp.record(name="support-demo") as run:
                demo.support_agent(demo.REQUEST)
            ids.append(run.id)
        return ids

    def test_a_model_update_shows_in_every_step(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The demo model's new fingerprint and name are reported for each run."""
        self.record_demo(3)
        demo.reset_db()
        monkeypatch.setattr(demo, "FINGERPRINT", "fp_demo_2")
        monkeypatch.setattr(demo, "MODEL", "scripted-sampler-2")
        report = rp.drift(name="support-demo", judge=None)
        assert len(report.steps) == 3
        for step in report.steps:
            assert step.step == "choose_record#1"
            assert {"model", "system_fingerprint"} <= {c.field for c in step.changes}
        assert demo.customers() == [tuple(c) for c in demo.CUSTOMERS]

    def test_cli_json_junit_and_exit_code(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """`replayable drift` exits 1 on drift, prints JSON, writes one JUnit case per step."""
        ids = self.record_demo(2)
        monkeypatch.setattr(demo, "FINGERPRINT", "fp_demo_2")
        junit = tmp_path / "drift.xml"
        result = CliRunner().invoke(
            main,
            [
                "drift",
                "--name",
                "support-demo",
                "--import",
                "replayable.demo.agent",
                "--judge",
                "exact",
                "--json",
                "--junit",
                str(junit),
            ],
        )
        assert result.exit_code == 1, result.output
        data = json.loads(result.output)
        assert sorted(data["runs"]) == sorted(ids)
        assert (
            data["summary"]["replayable.demo.agent:choose_record"]["fields"]["system_fingerprint"]
            == 2
        )
        suite = ET.parse(junit).getroot().find("testsuite")
        assert suite is not None
        assert (suite.get("tests"), suite.get("failures")) == ("2", "2")

    def test_cli_prints_a_summary_line_per_boundary(self) -> None:
        """The human report ends with calls drifted per boundary."""
        (run_id,) = self.record_demo(1)
        result = CliRunner().invoke(
            main, ["drift", run_id, "--import", "replayable.demo.agent", "--judge", "exact"]
        )
        assert result.exit_code in (0, 1), result.output  # the demo model samples
        assert "call(s) drifted" in result.output.splitlines()[-1]

    def test_cli_sample_and_seed_pick_the_same_runs_again(self) -> None:
        """--sample N --seed S re-runs N of the selected runs, the same ones each time."""
        self.record_demo(4)
        args = ["drift", "--name", "support-demo", "--import", "replayable.demo.agent"]
        picked = []
        for _ in range(2):
            result = CliRunner().invoke(
                main, [*args, "--sample", "2", "--seed", "5", "--judge", "exact", "--json"]
            )
            assert result.exit_code in (0, 1), result.output
            picked.append(json.loads(result.output)["runs"])
        assert len(picked[0]) == 2
        assert picked[0] == picked[1]
        alone = CliRunner().invoke(main, [*args, "--seed", "5"])
        assert alone.exit_code == 2
        assert "--seed goes with --sample" in alone.output

    def test_cli_a_kind_with_no_recorded_calls_is_a_one_line_error(self) -> None:
        """--kind that names no recorded call (a typo) re-runs nothing: exit 2, not a green 0."""
        self.record_demo(1)
        result = CliRunner().invoke(
            main,
            [
                *("drift", "--name", "support-demo"),
                *("--import", "replayable.demo.agent", "--kind", "lm"),
            ],
        )
        assert result.exit_code == 2, result.output
        assert "no recorded 'lm' calls in the 1 run(s) picked" in result.output

    def test_cli_without_runs_is_a_one_line_error(self) -> None:
        """No RUN and no query: exit 2 with one line."""
        result = CliRunner().invoke(main, ["drift", "--import", "replayable.demo.agent"])
        assert result.exit_code == 2
        assert "error: name runs" in result.output


class TestFreshProcess:
    def test_cli_re_runs_calls_through_a_client_that_made_no_call_yet(
        self, last_week: list[rp.Run], tmp_path: Path
    ) -> None:
        """`replayable drift --import M` in a new process: M only instruments a client."""
        import os
        import subprocess
        import sys

        (tmp_path / "todays_model.py").write_text(
            "import os, openai\n"
            "import replayable as rp\n"
            "client = rp.instrument(openai.OpenAI(base_url=os.environ['MODEL_URL'], "
            "api_key='sk-test', max_retries=0))\n"
        )
        today = FakeLLMServer(seed=5, fingerprint="fp_new", steer=always_lookup).start()
        try:
            env = {
                **os.environ,
                "MODEL_URL": today.openai_url,
                "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
            }
            args = ["drift", "--name", "orders", "--import", "todays_model", "--judge", "exact"]
            proc = subprocess.run(
                [sys.executable, "-m", "replayable.cli", *args, "--json"],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp_path,
                timeout=120,
                check=False,
            )
        finally:
            today.stop()
        assert proc.returncode == 1, proc.stderr
        steps = json.loads(proc.stdout)["steps"]
        assert len(today.requests) == 4
        assert [s["status"] for s in steps] == ["drifted"] * 4
        assert {c["field"] for s in steps for c in s["changes"]} == {"system_fingerprint"}


PII_KEY = "drift-pii-key-" + "e" * 32
REAL = {"email": "dana.whitfield@acme.io", "phone": "+1 415-867-5309", "name": "Dana Whitfield"}
MODEL_SAYS: dict[str, str] = {}


@rp.boundary(kind="tool", name="drift_test:contact")
def contact(email: str) -> dict[str, str]:
    """A CRM lookup the model calls with the support address it knows (a live value)."""
    return {"email": email, "phone": REAL["phone"]}


@rp.boundary(kind="llm", name="drift_test:draft")
def draft(ticket: str) -> str:
    """A model call that looks a contact up with a value of its own (not from its input) and
    answers with personal data in the text."""
    found = contact(REAL["email"])
    return f"{MODEL_SAYS['now']} {REAL['name']} at {found['email']} or {found['phone']}"


class TestPersonalData:
    """A run recorded with ``pii=`` is re-run the way its replay is: live inputs are keyed and
    live answers compared and reported as pseudonyms."""

    def record(self) -> rp.Run:
        MODEL_SAYS["now"] = "Write to"
        with rp.record(name="pii-drift", pii=rp.PII(names=[REAL["name"]], key=PII_KEY)) as run:
            draft(f"ticket from {REAL['email']}")
        return run

    def test_a_nested_call_with_a_live_personal_value_is_served(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The nested lookup's live input (a real email) is pseudonymized before it is keyed,
        so it matches the recording, and the unchanged answer is no drift."""
        run = self.record()
        monkeypatch.setenv("REPLAYABLE_PII_KEY", PII_KEY)
        [step] = rp.drift(run.id, judge=None).steps
        assert (step.status, step.reason) == ("same", "")

    def test_a_drifted_answer_is_reported_with_pseudonyms_only(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Today's answer changed: the change, the report, the JSON and the JUnit file hold
        the pseudonyms, never the real values the live answer carried."""
        run = self.record()
        monkeypatch.setenv("REPLAYABLE_PII_KEY", PII_KEY)
        MODEL_SAYS["now"] = "Please call"
        report = rp.drift(run.id, judge=None)
        [step] = report.steps
        assert step.status == "drifted"
        pseudonym = rp.PII(key=PII_KEY).pseudonymizer().text(REAL["email"])
        live = " ".join(str(c.live) for c in step.changes)
        assert "Please call" in live
        assert pseudonym in live
        junit = tmp_path / "drift.xml"
        result = CliRunner().invoke(
            main,
            [
                *("drift", run.id, "--import", "tests.test_drift"),
                *("--judge", "exact", "--json", "--junit", str(junit)),
            ],
        )
        assert result.exit_code == 1, result.output
        for text in (
            json.dumps(report.to_dict()),
            report.report(),
            result.output,
            junit.read_text(),
        ):
            for value in (*REAL.values(), "Whitfield", "dana.whitfield", "867-5309"):
                assert value not in text

    def test_without_the_key_drift_is_a_clear_error(self) -> None:
        """No key set: PIIKeyError naming the run, before any call runs."""
        run = self.record()
        MODEL_SAYS["now"] = "never run"
        with pytest.raises(rp.PIIKeyError, match=run.id):
            rp.drift(run.id, judge=None)
