"""The replay half of the producer tests: an agent traced by a real producer (OpenTelemetry's
openai-v2, OpenInference for OpenAI and LangChain, Logfire, Langfuse) is collected, then the same
agent code, instrumented with replayable, replays the imported run offline: no request reaches
the model, the side effect does not happen again, the answer is the recorded one."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.store import Store, open_store

from . import producer_agent
from .conftest import LiveCollector
from .test_producers import PRODUCERS, kept_events, run_producer

PROMPT = "Refund order 7"


@pytest.fixture(autouse=True)
def forget_agents() -> Iterator[None]:
    """The agent boundaries a test registers are gone after it (a check maps a trace's root
    agent to the one registered agent of its name)."""
    from replayable._registry import REGISTRY

    before = set(REGISTRY)
    yield
    for name in set(REGISTRY) - before:
        if REGISTRY[name].kind == "agent":
            del REGISTRY[name]


@dataclass
class Traced:
    """One producer's traced incident: the imported run, its store, the model server it used
    and the side-effect database it wrote to."""

    producer: str
    run_id: str
    answer: str
    store: Store
    model: FakeLLMServer
    db: Path

    def refunds(self) -> list[tuple[int]]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute("SELECT order_id FROM refunds").fetchall()


def trace(
    producer: str,
    tmp: Path,
    start: Callable[..., LiveCollector],
    **env: str,
) -> Traced:
    """Run the agent live under ``producer`` and collect its trace into a store of its own."""
    store = open_store(tmp / "traces.db")
    model = FakeLLMServer(seed=3).start()
    collector = start(store, settle=0.5)
    db = tmp / "effects.db"
    answer = run_producer(producer, model, collector, db, **env)
    run, _ = kept_events(store, collector)
    return Traced(producer, run.id, answer, store, model, db)


@pytest.fixture
def traced(
    tmp_path: Path,
    live_collector: Callable[..., LiveCollector],
) -> Iterator[Callable[..., Traced]]:
    """Trace the agent under a producer (servers stopped after the test)."""
    made: list[Traced] = []

    def make(producer: str, **env: str) -> Traced:
        where = tmp_path / f"{producer}-{len(made)}"
        where.mkdir()
        t = trace(producer, where, live_collector, **env)
        made.append(t)
        return t

    yield make
    for t in made:
        t.model.stop()


def replay_agent(t: Traced, prompt: str = PROMPT, **options: Any) -> tuple[str, rp.Replay]:
    """The same agent code, instrumented with replayable, replaying ``t``'s imported run."""
    if t.producer == "openinference-langchain":
        model, tool = producer_agent.langchain_parts(t.model.openai_url)
        rp.instrument(model)
        rp.instrument([tool], side_effects=["refund"])
        with rp.replay(t.run_id, store=t.store, **options) as r:
            answer = producer_agent.langchain_agent(model, tool, prompt)
        return answer, r
    client = rp.instrument(openai.OpenAI(base_url=t.model.openai_url, api_key="sk-test"))
    refund = rp.boundary(kind="tool", side_effects=True)(producer_agent.refund)
    with rp.replay(t.run_id, store=t.store, **options) as r:
        answer = producer_agent.openai_agent(client, prompt, refund)
    return answer, r


class TestReplayImported:
    @pytest.mark.parametrize("producer", PRODUCERS)
    def test_agent_replays_its_trace_offline(
        self, producer: str, traced: Callable[..., Traced]
    ) -> None:
        """The agent's own code replays the imported run: the recorded answer, no request to
        the model, the refund not made again, and the report says what was not compared."""
        t = traced(producer)
        seen = len(t.model.requests)
        assert len(t.refunds()) == 1
        answer, r = replay_agent(t)
        assert answer == t.answer
        assert len(t.model.requests) == seen
        assert len(t.refunds()) == 1
        assert r.ok, r.report()
        report = r.report()
        assert report.count("imported llm steps compared on") == 1
        assert report.count("imported tool steps compared on") == 1
        rp.flush()
        steps = list(t.store.iter_events(r.run.id))
        assert [s.kind for s in steps if s.meta.get("served")] == ["llm", "tool", "llm"]

    @pytest.mark.parametrize("producer", PRODUCERS)
    def test_a_changed_prompt_diverges_at_the_first_model_call(
        self, producer: str, traced: Callable[..., Traced]
    ) -> None:
        """Another prompt is a divergence at the first llm step, naming the changed message."""
        t = traced(producer)
        with pytest.raises(rp.Divergence) as info:
            replay_agent(t, prompt="Refund order 8")
        div = info.value
        assert div.reason == "changed"
        assert div.address.endswith("/0")
        assert " > llm:" in div.address
        assert [c.path for c in div.changes] == ["messages[1].content"]
        assert len(t.refunds()) == 1


NOT_CAPTURED = {
    "openai-v2": ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false"}, "llm"),
    "openinference-openai": (
        {"OPENINFERENCE_HIDE_INPUTS": "true", "OPENINFERENCE_HIDE_OUTPUTS": "true"},
        "llm",
    ),
    "openinference-langchain": ({"OPENINFERENCE_HIDE_OUTPUT_TEXT": "true"}, "llm"),
    "langfuse": ({"LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED": "false"}, "tool"),
}
SETTING = {
    "openai-v2": "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true",
    "openinference-openai": "OPENINFERENCE_HIDE_INPUTS",
    "openinference-langchain": "OPENINFERENCE_HIDE_OUTPUT_TEXT",
    "langfuse": "LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED",
}


class TestContentNotCaptured:
    @pytest.mark.parametrize("producer", sorted(NOT_CAPTURED))
    def test_a_step_without_content_fails_naming_the_setting(
        self, producer: str, traced: Callable[..., Traced]
    ) -> None:
        """Traced without content, the step cannot be served: NotCaptured names the producer's
        setting that captures it, and nothing reaches the model or fires again."""
        env, kind = NOT_CAPTURED[producer]
        t = traced(producer, **env)
        seen = len(t.model.requests)
        with pytest.raises(rp.NotCaptured) as info:
            replay_agent(t)
        message = str(info.value)
        assert SETTING[producer] in message
        assert f"this {kind} step" in message
        assert t.run_id in message
        assert len(t.model.requests) == seen
        assert len(t.refunds()) == 1


def register_agent(t: Traced) -> Callable[[str], str]:
    """The OpenAI agent as a registered agent boundary named like the traced agent
    (``refunds``), so a check re-runs it with the trace's input."""
    client = rp.instrument(openai.OpenAI(base_url=t.model.openai_url, api_key="sk-test"))
    tool = rp.boundary(kind="tool", side_effects=True)(producer_agent.refund)

    def refunds(prompt: str) -> str:
        return producer_agent.openai_agent(client, prompt, tool)

    agent: Callable[[str], str] = rp.boundary(kind="agent")(refunds)
    return agent


class TestImportedRunsInTheLoop:
    def test_check_replays_an_imported_run_against_the_code(
        self, traced: Callable[..., Traced]
    ) -> None:
        """``rp.check`` re-runs the agent the trace's root stands for with the traced input:
        unchanged, with no request to the model and no refund made again."""
        t = traced("openinference-openai")
        register_agent(t)
        seen = len(t.model.requests)
        report = rp.check(t.store, save=False)
        assert [(o.run_id, o.outcome) for o in report.outcomes] == [(t.run_id, "unchanged")]
        assert len(t.model.requests) == seen
        assert len(t.refunds()) == 1

    def test_check_says_which_agent_to_decorate(self, traced: Callable[..., Traced]) -> None:
        """Without a registered agent of the traced agent's name the run is not replayable,
        and the detail names the function to decorate."""
        t = traced("openai-v2")
        report = rp.check(t.store, save=False)
        (outcome,) = report.outcomes
        assert outcome.outcome == "not_replayable"
        assert "named 'refunds'" in outcome.detail

    def test_fork_overrides_the_tool_and_runs_the_next_model_call_live(
        self, traced: Callable[..., Traced]
    ) -> None:
        """A what-if on an imported run: the tool's result overridden, the model call that now
        differs runs live (one request), the refund is not made again."""
        t = traced("openai-v2")
        agent = register_agent(t)
        seen = len(t.model.requests)
        with rp.replay(
            t.run_id,
            store=t.store,
            override={"refund#1": {"refunded": 0}},
            live_kinds=("llm",),
        ) as r:
            answer = agent(PROMPT)
        assert len(t.model.requests) == seen + 1
        assert answer != t.answer
        assert [(c.how, c.step) for c in r.changes] == [
            ("overridden", "refund#1"),
            ("live", "gpt-4o-mini#2"),
        ]  # the GenAI agent span carried no output to compare the new answer with
        assert [c.path for c in r.changes[1].changes] == ["input.messages[3].content.refunded"]
        assert len(t.refunds()) == 1

    def test_diff_pairs_a_replay_with_the_imported_steps_it_was_served_from(
        self, traced: Callable[..., Traced]
    ) -> None:
        """``rp.diff(imported, replay)`` pairs each replayed step with the imported step it
        stands for, compared as the replay compares them: nothing changed."""
        t = traced("openai-v2")
        _, r = replay_agent(t)
        rp.flush()
        diff = rp.diff(t.run_id, r.run.id, store=t.store)
        paired = [(p.status, p.matched_by, p.a.kind) for p in diff.pairs if p.a and p.b]
        assert paired == [
            ("same", "source", "llm"),
            ("same", "source", "tool"),
            ("same", "source", "llm"),
        ]

    def test_a_diverged_check_diffs_at_the_changed_message(
        self, traced: Callable[..., Traced]
    ) -> None:
        """Changed code (another prompt) checked against the imported run: diverged at the
        first model call, and its kept replay diffs against the run at that message."""
        t = traced("openinference-openai")
        client = rp.instrument(openai.OpenAI(base_url=t.model.openai_url, api_key="sk-test"))
        tool = rp.boundary(kind="tool", side_effects=True)(producer_agent.refund)

        def refunds(prompt: str) -> str:
            return producer_agent.openai_agent(client, prompt + " today", tool)

        rp.boundary(kind="agent")(refunds)
        report = rp.check(t.store)
        (outcome,) = report.outcomes
        assert outcome.outcome == "diverged"
        assert outcome.replay_id is not None
        first = rp.diff(t.run_id, outcome.replay_id, store=t.store).first_divergence
        assert first is not None
        assert [c.path for c in first.input_changes] == ["messages[1].content"]


AGENT_MODULE = """
import os

import openai
import orjson

import replayable as rp
from tests.otlp import producer_agent

client = rp.instrument(openai.OpenAI(base_url=os.environ["MODEL_URL"], api_key="sk-test"))
refund = rp.boundary(kind="tool", side_effects=True)(producer_agent.refund)


@rp.boundary(kind="agent")
def refunds(prompt: str) -> str:
    return producer_agent.openai_agent(client, prompt{suffix}, refund)
"""


WORLD = """

from contextlib import contextmanager


@contextmanager
def scratch(tmp_path):
    before = os.environ["SIDE_EFFECT_DB"]
    world = os.path.join(os.path.dirname(__file__), "world")
    os.makedirs(world, exist_ok=True)
    os.environ["SIDE_EFFECT_DB"] = os.path.join(world, "scratch.db")
    try:
        yield
    finally:
        os.environ["SIDE_EFFECT_DB"] = before
"""


def agent_module(
    t: Traced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str = ""
) -> str:
    """Write the agent's code as a module ``--import`` can load (a name of its own per test),
    pointed at ``t``'s model server and side-effect database."""
    name = f"refund_agent_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        AGENT_MODULE.format(suffix=f" + {suffix!r}" if suffix else "")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MODEL_URL", t.model.openai_url)
    monkeypatch.setenv("SIDE_EFFECT_DB", str(t.db))
    return name


def cli(*args: str) -> Any:
    """Run the replayable command line in this process."""
    from click.testing import CliRunner

    from replayable.cli import main

    return CliRunner().invoke(main, list(args))


class TestTheCommandLine:
    def test_check_serves_the_imported_run_to_the_imported_module(
        self, traced: Callable[..., Traced], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``replayable check --import MODULE`` re-runs the agent against the imported run:
        exit 0, unchanged, no request to the model, the refund not made again."""
        t = traced("openinference-openai")
        module = agent_module(t, tmp_path, monkeypatch)
        seen = len(t.model.requests)
        result = cli("check", "--import", module, "--store", t.store.url, "--no-save", "--json")
        assert result.exit_code == 0, result.output
        assert [o["outcome"] for o in orjson.loads(result.stdout)["runs"]] == ["unchanged"]
        assert len(t.model.requests) == seen
        assert len(t.refunds()) == 1

    def test_check_without_the_agent_names_the_function_to_decorate(
        self, traced: Callable[..., Traced]
    ) -> None:
        """Without the agent's module the imported run is not replayable, and the check says
        which function (by the traced agent's name) to decorate."""
        t = traced("openinference-openai")
        result = cli("check", "--import", "sqlite3", "--store", t.store.url, "--no-save")
        assert result.exit_code == 1, result.output  # nothing was replayed: no pass
        assert "not replayable    1" in result.output
        assert "named 'refunds'" in result.output
        assert "nothing checked" in result.output

    def test_a_trace_without_the_agents_input_says_so(
        self, traced: Callable[..., Traced], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A GenAI ``invoke_agent`` span carries no agent input: the check finds the agent but
        has no arguments to call it with, so the run is not replayable and the check says why
        (never a TypeError from calling the agent without them)."""
        t = traced("openai-v2")
        module = agent_module(t, tmp_path, monkeypatch)
        result = cli("check", "--import", module, "--store", t.store.url, "--json")
        assert result.exit_code == 1, result.output  # nothing was replayed: no pass
        (outcome,) = orjson.loads(result.stdout)["runs"]
        assert outcome["outcome"] == "not_replayable"
        assert "did not carry the input of its root agent step 'refunds'" in outcome["detail"]
        fork = cli(
            "fork", t.run_id, "--import", module, "--store", t.store.url,
            "--at", "refund#1", "--set-output", "{}",
        )  # fmt: skip
        assert fork.exit_code == 2, fork.output
        assert "rp.replay(" in fork.output
        assert "Traceback" not in fork.output

    def test_a_changed_prompt_is_checked_then_diffed(
        self, traced: Callable[..., Traced], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Changed code: check exits 1 with the run diverged and keeps the replay;
        ``replayable diff RUN REPLAY`` exits 1 and names the changed message."""
        t = traced("openinference-openai")
        module = agent_module(t, tmp_path, monkeypatch, suffix=" today")
        result = cli("check", "--import", module, "--store", t.store.url, "--json")
        assert result.exit_code == 1, result.output
        (outcome,) = orjson.loads(result.stdout)["runs"]
        assert outcome["outcome"] == "diverged"
        rp.flush()
        diff = cli("diff", t.run_id, outcome["replay_id"], "--store", t.store.url, "--json")
        assert diff.exit_code == 1, diff.output
        aligned = orjson.loads(diff.stdout)
        first = aligned["pairs"][aligned["first_divergence"]]
        assert (first["kind"], first["matched_by"]) == ("llm", "source")
        assert [c["path"] for c in first["changes"]["input"]] == ["messages[1].content"]
        assert len(t.refunds()) == 1

    def test_fork_overrides_the_tool_then_diff_shows_the_changed_answer(
        self, traced: Callable[..., Traced], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``replayable fork RUN --at refund#1 --set-output ... --live-kind llm``: the later
        model call runs live (one request), the refund is not made again, the fork is kept,
        and ``replayable diff`` pairs it with the imported run: the tool's output changed."""
        t = traced("openinference-openai")
        module = agent_module(t, tmp_path, monkeypatch)
        seen = len(t.model.requests)
        result = cli(
            "fork", t.run_id, "--import", module, "--store", t.store.url,
            "--at", "refund#1", "--set-output", '{"refunded": 0}', "--live-kind", "llm", "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        fork = orjson.loads(result.stdout)
        assert [(c["how"], c["step"]) for c in fork["changes"]] == [
            ("overridden", "refund#1"),
            ("live", "gpt-4o-mini#2"),
            ("live", "refunds#1"),
        ]
        assert len(t.model.requests) == seen + 1
        assert len(t.refunds()) == 1
        rp.flush()
        diff = cli("diff", t.run_id, fork["fork"], "--store", t.store.url, "--json")
        assert diff.exit_code == 1, diff.output
        pairs = orjson.loads(diff.stdout)["pairs"]
        assert [(p["kind"], p["status"]) for p in pairs if p["a"] and p["b"]] == [
            ("agent", "changed"), ("llm", "same"), ("tool", "changed"), ("llm", "changed"),
        ]  # fmt: skip
        shown = cli("show", fork["fork"], "--store", t.store.url)
        assert shown.exit_code == 0, shown.output
        assert "refund" in shown.output


def promoted(t: Traced, tmp_path: Path, module: str, *options: str) -> Path:
    """``replayable promote RUN --import MODULE [OPTIONS]`` into ``tmp_path/promoted``; the
    test file."""
    out = tmp_path / "promoted"
    result = cli(
        "promote", t.run_id, "--import", module, "--store", t.store.url,
        "--output", str(out / "traces" / "incident.jsonl"),
        "--test", str(out / "test_incident.py"), *options,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out / "test_incident.py"


def run_pytest(test: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The generated test run by pytest in a process of its own, from ``tmp_path`` (where the
    agent's module is), the way a project's CI runs it."""
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(tmp_path), str(root), str(root / "src")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class TestPromoteImported:
    def test_the_promoted_test_passes_offline(
        self, traced: Callable[..., Traced], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """promote writes a trace file and a test calling the registered agent with the traced
        input; with the model server stopped it passes: no request, the refund not made again."""
        t = traced("openinference-openai")
        module = agent_module(t, tmp_path, monkeypatch)
        test = promoted(t, tmp_path, module)
        source = test.read_text()
        assert f"from {module} import refunds" in source
        assert "refunds('Refund order 7')" in source
        assert "assert [c.kind for c in rt.calls(replay)] == ['llm', 'tool', 'llm']" in source
        assert "('refund', {'order': " in source  # the tool by name with its traced arguments
        header = orjson.loads(
            (tmp_path / "promoted/traces/incident.jsonl").read_bytes().split(b"\n")[0]
        )
        assert header["run"]["metadata"]["source"]["format"] == "otlp"
        seen = len(t.model.requests)
        t.model.stop()
        done = run_pytest(test, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 passed" in done.stdout
        assert len(t.model.requests) == seen
        assert len(t.refunds()) == 1

    def test_a_changed_agent_fails_the_promoted_test(
        self, traced: Callable[..., Traced], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Once the agent's prompt changes, the promoted test fails at the changed model call
        (offline, the refund not made again)."""
        t = traced("openinference-openai")
        module = agent_module(t, tmp_path, monkeypatch)
        test = promoted(t, tmp_path, module)
        (tmp_path / f"{module}.py").write_text(AGENT_MODULE.format(suffix=" + ' today'"))
        t.model.stop()
        done = run_pytest(test, tmp_path)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "1 failed" in done.stdout
        assert "messages[1].content" in done.stdout
        assert len(t.refunds()) == 1

    def test_forbid_on_an_imported_run_fails_while_the_agent_still_calls_it(
        self, traced: Callable[..., Traced], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """promote --forbid refund of an imported run writes an incident test that fails,
        naming the traced call, while the agent still refunds; offline, the refund served and
        not made again."""
        t = traced("openinference-openai")
        module = agent_module(t, tmp_path, monkeypatch)
        test = promoted(t, tmp_path, module, "--forbid", "refund")
        source = test.read_text()
        assert "rt.assert_not_called(replay, 'refund')" in source
        seen = len(t.model.requests)
        t.model.stop()
        done = run_pytest(test, tmp_path)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "1 failed" in done.stdout
        assert "refund" in done.stdout
        assert "was called 1 time(s)" in done.stdout
        assert len(t.model.requests) == seen
        assert len(t.refunds()) == 1

    def test_live_on_an_imported_run_runs_the_tool_in_the_tests_world(
        self, traced: Callable[..., Traced], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """promote --live refund --world M:F of an imported run: the test runs the refund
        live in the world it is given (a scratch database), never in the incident's, and
        fails while it does again what the trace says it did; the model is not contacted."""
        t = traced("openinference-openai")
        module = agent_module(t, tmp_path, monkeypatch)
        with (tmp_path / f"{module}.py").open("a") as fh:
            fh.write(WORLD)
        test = promoted(t, tmp_path, module, "--live", "refund", "--world", f"{module}:scratch")
        assert f"from {module} import scratch as world" in test.read_text()
        seen = len(t.model.requests)
        t.model.stop()
        done = run_pytest(test, tmp_path)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "was called 1 time(s)" in done.stdout
        assert len(t.model.requests) == seen
        assert len(t.refunds()) == 1  # the incident's database: untouched
        with sqlite3.connect(tmp_path / "world" / "scratch.db") as conn:
            assert len(conn.execute("SELECT order_id FROM refunds").fetchall()) == 1

    def test_a_trace_without_the_agents_input_is_refused(
        self, traced: Callable[..., Traced], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A GenAI ``invoke_agent`` span carries no agent input: promote says so, as check does,
        and writes nothing."""
        t = traced("openai-v2")
        module = agent_module(t, tmp_path, monkeypatch)
        out = tmp_path / "promoted"
        result = cli(
            "promote", t.run_id, "--import", module, "--store", t.store.url,
            "--output", str(out / "incident.jsonl"), "--test", str(out / "test_incident.py"),
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "did not carry the input of its root agent step 'refunds'" in result.output
        assert "Traceback" not in result.output
        assert not out.exists()


class TestPersonalData:
    def test_a_run_imported_with_pii_replays_under_its_key(
        self, tmp_path: Path, store: Store
    ) -> None:
        """A trace imported with ``pii=`` replays against the agent's clear-text call: the live
        messages are pseudonymized under the run's key before they are compared (before, every
        message with personal data diverged); another clear value still diverges."""
        from .test_import import jspan, otlp_json

        email = "dana.whitfield@acme.io"
        chat = jspan(
            "00f067aa0ba902b7",
            **{
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": f"Refund order 7 for {email}",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": f"Refunded {email}",
            },
        )
        path = tmp_path / "trace.json"
        path.write_bytes(orjson.dumps(otlp_json([chat])))
        pii = rp.PII(key="otlp-replay-key-" + "e" * 32)
        ((run, _),) = rp.import_otlp(path, store, pii=pii)
        client = rp.instrument(openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x"))

        def ask(prompt: str) -> str:
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
            )
            return str(reply.choices[0].message.content)

        with rp.replay(run.id, store=store, pii=pii) as r:
            answer = ask(f"Refund order 7 for {email}")
        assert r.ok, r.report()
        assert email not in answer  # served as stored: the pseudonym
        with pytest.raises(rp.Divergence) as info, rp.replay(run.id, store=store, pii=pii):
            ask("Refund order 7 for someone.else@acme.io")
        assert [c.path for c in info.value.changes] == ["messages[0].content"]
        assert "someone.else" not in str(info.value)
