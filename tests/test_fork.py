"""What-if replays: override a step's output, or fork live from it, never firing a side effect
unasked."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.cli import main
from replayable.demo import agent as demo

PICK_12 = {
    "tool": "delete_record",
    "arguments": {"customer_id": 12},
    "reason": "The user is Dana Whitmore.",
}


def rows() -> int:
    return len(demo.customers())


@pytest.fixture
def good_run() -> rp.Run:
    """A demo run where the sampling model chose right (customer 13); the database reset."""
    for _ in range(100):
        demo.reset_db()
        with rp.record(name="support-demo") as run:
            out = demo.support_agent(demo.REQUEST)
        if out["customer"]["id"] == 13:
            demo.reset_db()
            return run
    raise AssertionError("the demo model never chose customer 13")  # pragma: no cover


class TestOverride:
    def test_the_agent_takes_the_other_path_and_the_side_effect_is_not_fired(
        self, good_run: rp.Run
    ) -> None:
        """Overriding the model's choice changes delete_record's input: it is refused by the
        replay (a divergence), never called: the table keeps its five rows."""
        with (
            pytest.raises(rp.Divergence) as caught,
            rp.replay(good_run.id, override={"choose_record#1": PICK_12}, strict=False) as r,
        ):
            demo.support_agent(demo.REQUEST)
        assert caught.value.boundary == "replayable.demo.agent:delete_record"
        assert [str(c) for c in caught.value.changes] == ["~ customer_id: 13 -> 12"]
        assert rows() == 5
        assert [(c.how, c.step) for c in r.changes] == [("overridden", "choose_record#1")]
        report = r.report()
        assert "overridden: choose_record#1" in report
        assert "output.arguments.customer_id: 13 -> 12" in report

    def test_with_a_fake_the_changed_side_effect_runs_the_fake(self, good_run: rp.Run) -> None:
        """The fake gets the new arguments; the report names every step that changed."""
        faked: list[int] = []

        def no_delete(customer_id: int) -> dict[str, Any]:
            faked.append(customer_id)
            return {"deleted": 0, "customer_id": customer_id}

        with rp.replay(
            good_run.id, override={"choose_record#1": PICK_12}, fakes={"delete_record": no_delete}
        ) as r:
            out = demo.support_agent(demo.REQUEST)
        assert faked == [12]
        assert out["customer"]["id"] == 12
        assert rows() == 5
        assert [(c.how, c.step) for c in r.changes] == [
            ("overridden", "choose_record#1"),
            ("faked", "delete_record#1"),
            ("live", "support_agent#1"),
        ]
        faked_change = r.changes[1]
        assert "~ input.customer_id: 13 -> 12" in [str(c) for c in faked_change.changes]
        assert r.divergences == []
        assert (
            r.report().splitlines()[0].startswith(f"fork of run {good_run.id} at choose_record#1 (")
        ), "a fork's report opens with its fork point, not a plain replay's match count"

    def test_a_path_that_no_longer_reaches_a_step_reports_it_not_reached(
        self, good_run: rp.Run, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the fix, the overridden choice is refused by the agent: delete_record is
        'not reached', and the agent's answer changed to 'refused'."""
        monkeypatch.setattr(demo, "GUARD", True)
        with rp.replay(good_run.id, override={"choose_record#1": PICK_12}) as r:
            out = demo.support_agent(demo.REQUEST)
        assert out["status"] == "refused"
        assert [(c.how, c.step) for c in r.changes] == [
            ("overridden", "choose_record#1"),
            ("live", "support_agent#1"),
            ("not reached", "delete_record#1"),
        ]
        assert "~ output.status: 'deleted' -> 'refused'" in r.report()
        assert r.divergences == []

    def test_an_exception_as_override_is_raised_at_that_step(self, good_run: rp.Run) -> None:
        """override={step: TimeoutError(...)}: the agent sees the exception, nothing is deleted."""
        with (
            pytest.raises(TimeoutError, match="model timed out"),
            rp.replay(good_run.id, override={"choose_record#1": TimeoutError("model timed out")}),
        ):
            demo.support_agent(demo.REQUEST)
        assert rows() == 5

    def test_an_unknown_step_is_a_clear_error_before_anything_runs(self, good_run: rp.Run) -> None:
        """name#N beyond the recording names how many calls there are."""
        with pytest.raises(rp.UnknownBoundary, match="has 1 recorded call"):
            rp.replay(good_run.id, override={"choose_record#2": PICK_12})
        with pytest.raises(rp.UnknownBoundary, match="no call to 'nope'"):
            rp.replay(good_run.id, live_from="nope")

    @pytest.mark.parametrize(
        ("kwargs", "written"),
        [
            ({"override": {"choose_record#2": PICK_12}}, "override={'choose_record#2': ...}: "),
            ({"live_from": "nope"}, "live_from='nope': "),
            ({"fakes": {"nope": print}}, "fakes={'nope': ...}: "),
            ({"live_from": "choose_record", "fakes": {"delete_record": 3}}, "fakes={'delete_"),
        ],
    )
    def test_errors_name_the_keyword_as_the_caller_wrote_it(
        self, good_run: rp.Run, kwargs: dict[str, Any], written: str
    ) -> None:
        """A bad what-if argument is named as it was written in the rp.replay(...) call."""
        with pytest.raises((rp.UnknownBoundary, TypeError)) as info:
            rp.replay(good_run.id, **kwargs)
        assert str(info.value).startswith(written)

    def test_the_fork_is_recorded_and_linked_to_its_source_step(self, good_run: rp.Run) -> None:
        """The fork's run names its source and the step it forked at."""
        with rp.replay(good_run.id, override={"choose_record#1": PICK_12}, strict=False) as r:
            with contextlib.suppress(rp.Divergence):
                demo.support_agent(demo.REQUEST)
        run = rp.open_store(None).get_run(r.run.id)
        assert run.parent_run == good_run.id
        assert run.metadata["fork"]["step"] == "choose_record#1"
        assert run.metadata["fork"]["address"].endswith("choose_record/0")
        assert run.name == "fork of support-demo at choose_record#1"


# -- live from the model step, against a loopback model that now answers differently ---------

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
CLIENT: dict[str, Any] = {}
SYSTEM = {"prompt": "You manage orders."}
CALLED: list[tuple[str, int]] = []


@rp.boundary(kind="tool", side_effects=True)
def cancel_order(db: str, order: int) -> int:
    CALLED.append(("cancel_order", order))
    with sqlite3.connect(db) as conn:
        return conn.execute("DELETE FROM orders WHERE id = ?", (order,)).rowcount


@rp.boundary(kind="tool")
def lookup_order(order: int) -> dict[str, Any]:
    CALLED.append(("lookup_order", order))
    return {"order": order, "status": "shipped"}


@rp.boundary(kind="agent")
def order_agent(db: str, prompt: str) -> Any:
    resp = CLIENT["openai"].chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": SYSTEM["prompt"]},
            {"role": "user", "content": prompt},
        ],
        tools=TOOLS,
    )
    call = resp.choices[0].message.tool_calls[0]
    order = json.loads(call.function.arguments)["order"]
    if call.function.name == "cancel_order":
        return {"cancelled": cancel_order(db, order)}
    return {"looked_up": lookup_order(order)}


def server(tool: str, order: int) -> FakeLLMServer:
    return FakeLLMServer(seed=order, steer=lambda prompt, tools: (tool, {"order": order})).start()


OPENED: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every client a test opened is closed after it (no socket left for the GC to find)."""
    yield
    while OPENED:
        OPENED.pop().close()


def use(srv: FakeLLMServer) -> None:
    client = openai.OpenAI(base_url=srv.openai_url, api_key=API_KEY, max_retries=0)
    OPENED.append(client)
    CLIENT["openai"] = rp.integrations.openai.instrument(client)


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
def cancelled_7(db: str) -> rp.Run:
    """Recorded: the model said cancel order 7, the agent cancelled it (then the row is back)."""
    import replayable.integrations.openai  # noqa: F401  (rp.integrations.openai)

    srv = server("cancel_order", 7)
    use(srv)
    with rp.record(name="orders") as run:
        order_agent(db, "cancel my order")
    srv.stop()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO orders VALUES (7)")
    CALLED.clear()
    return run


class TestLiveFrom:
    def test_a_side_effect_that_no_longer_matches_is_refused(
        self, cancelled_7: rp.Run, db: str
    ) -> None:
        """Today's model cancels order 3: the model step ran live, cancel_order(3) is refused."""
        srv = server("cancel_order", 3)
        use(srv)
        try:
            with (
                pytest.raises(rp.SideEffectRefused, match="order: 7 -> 3") as caught,
                rp.replay(cancelled_7.id, live_from="create#1") as r,
            ):
                order_agent(db, "cancel my order")
        finally:
            srv.stop()
        assert len(srv.requests) == 1
        assert "fakes={'cancel_order': fn}" in str(caught.value)
        assert CALLED == []
        assert orders(db) == 9
        hows = [(c.how, c.step) for c in r.changes]
        assert hows[:2] == [("live", "create#1"), ("refused", "cancel_order#1")]

    def test_with_a_fake_the_fake_runs(self, cancelled_7: rp.Run, db: str) -> None:
        """The same fork with fakes={'cancel_order': fn} completes, calling the fake only."""
        faked: list[int] = []
        srv = server("cancel_order", 3)
        use(srv)
        try:
            with rp.replay(
                cancelled_7.id,
                live_from="create#1",
                fakes={"cancel_order": lambda db, order: faked.append(order) or 0},
            ) as r:
                out = order_agent(db, "cancel my order")
        finally:
            srv.stop()
        assert out == {"cancelled": 0}
        assert faked == [3]
        assert CALLED == []
        assert orders(db) == 9
        assert [c.how for c in r.changes] == ["live", "faked", "live"]

    def test_read_tools_after_the_fork_run_live(self, cancelled_7: rp.Run, db: str) -> None:
        """Today's model looks order 5 up: lookup_order runs live, the cancel is not reached."""
        srv = server("lookup_order", 5)
        use(srv)
        try:
            with rp.replay(cancelled_7.id, live_from="create#1") as r:
                out = order_agent(db, "cancel my order")
        finally:
            srv.stop()
        assert out == {"looked_up": {"order": 5, "status": "shipped"}}
        assert CALLED == [("lookup_order", 5)]
        assert ("not reached", "cancel_order#1") in [(c.how, c.step) for c in r.changes]
        assert orders(db) == 9

    def test_a_side_effect_that_still_matches_exactly_is_served(
        self, cancelled_7: rp.Run, db: str
    ) -> None:
        """Today's model still cancels order 7: the model ran live, the cancel is served."""
        srv = server("cancel_order", 7)
        use(srv)
        try:
            with rp.replay(cancelled_7.id, live_from="create#1") as r:
                out = order_agent(db, "cancel my order")
        finally:
            srv.stop()
        assert len(srv.requests) == 1
        assert out == {"cancelled": 1}
        assert CALLED == []
        assert orders(db) == 9
        assert r.divergences == []


class TestOverrideSdkResponse:
    def test_a_json_response_is_served_as_the_sdk_type(self, cancelled_7: rp.Run, db: str) -> None:
        """Overriding the OpenAI call with response JSON: the agent gets a ChatCompletion that
        calls lookup_order; with live_kinds=('tool',) the read tool runs, nothing is cancelled."""
        recorded = next(
            e for e in rp.open_store(None).iter_events(cancelled_7.id) if e.kind == "llm"
        )
        response = json.loads(json.dumps(recorded.output))
        call = response["choices"][0]["message"]["tool_calls"][0]["function"]
        call.update(name="lookup_order", arguments=json.dumps({"order": 4}))
        with rp.replay(cancelled_7.id, override={"create#1": response}, live_kinds=("tool",)) as r:
            out = order_agent(db, "cancel my order")
        assert out == {"looked_up": {"order": 4, "status": "shipped"}}
        assert CALLED == [("lookup_order", 4)]
        assert orders(db) == 9
        assert [(c.how, c.step) for c in r.changes] == [
            ("overridden", "create#1"),
            ("live", "lookup_order"),
            ("live", "order_agent#1"),
            ("not reached", "cancel_order#1"),
        ]


class TestLiveKinds:
    def test_a_changed_model_call_runs_live_while_matching_calls_are_served(
        self, cancelled_7: rp.Run, db: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """live_kinds=('llm',): a prompt the recording lacks goes to the model; the cancel it
        leads to (unchanged) is served."""
        monkeypatch.setitem(SYSTEM, "prompt", "You manage orders. Be brief.")
        srv = server("cancel_order", 7)
        use(srv)
        try:
            with rp.replay(cancelled_7.id, live_kinds=("llm",)) as r:
                out = order_agent(db, "cancel my order")
        finally:
            srv.stop()
        assert len(srv.requests) == 1
        assert out == {"cancelled": 1}
        assert CALLED == []
        (change,) = [c for c in r.changes if c.step == "create#1"]
        assert change.how == "live"
        assert any(c.path.startswith("input.messages") for c in change.changes)

    def test_without_it_the_same_change_is_a_divergence(
        self, cancelled_7: rp.Run, db: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The plain replay of the same changed prompt diverges at the model call."""
        monkeypatch.setitem(SYSTEM, "prompt", "You manage orders. Be brief.")
        with (
            pytest.raises(rp.Divergence, match=r"chat\.completions\.create"),
            rp.replay(cancelled_7.id),
        ):
            order_agent(db, "cancel my order")


class TestForkCli:
    def test_set_output_names_the_override_and_stops_at_the_side_effect(
        self, good_run: rp.Run
    ) -> None:
        """`replayable fork --set-output`: exit 1, the side effect not fired, the fork recorded."""
        result = CliRunner().invoke(
            main,
            [
                "fork",
                good_run.id,
                "--import",
                "replayable.demo.agent",
                "--at",
                "choose_record",
                "--set-output",
                json.dumps(PICK_12),
            ],
        )
        assert result.exit_code == 1, result.output
        assert "overridden: choose_record#1" in result.output
        assert "~ customer_id: 13 -> 12" in result.output
        assert "fork recorded as run" in result.output
        assert rows() == 5

    def test_live_from_with_a_fake_from_a_module(self, good_run: rp.Run, tmp_path: Path) -> None:
        """--live-from --fake NAME=module:fn runs to the end (exit 0), JSON names the fork."""
        (tmp_path / "whatif_fakes.py").write_text(
            "def no_delete(customer_id):\n    return {'deleted': 0, 'customer_id': customer_id}\n"
        )
        result = CliRunner().invoke(
            main,
            [
                "fork",
                good_run.id,
                "--import",
                "replayable.demo.agent",
                "--at",
                "choose_record#1",
                "--live-from",
                "--fake",
                "delete_record=whatif_fakes:no_delete",
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["source"] == good_run.id
        assert data["at"]["step"] == "choose_record#1"
        assert data["stopped"] is None
        assert rows() == 5

    def test_an_agent_that_raises_in_the_fork_exits_1(self, good_run: rp.Run) -> None:
        """A fork whose agent raises (here: the overridden step's error) is not a clean exit."""
        result = CliRunner().invoke(
            main,
            [
                "fork",
                good_run.id,
                "--import",
                "replayable.demo.agent",
                "--at",
                "choose_record#1",
                "--set-error",
                "TimeoutError:model timed out",
            ],
        )
        assert result.exit_code == 1, result.output
        assert "the agent raised TimeoutError: model timed out" in result.output

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--at", "nope", "--set-output", "1"], "error: --at nope: run "),
            (["--at", "nope", "--live-from"], "error: --at nope: run "),
            (["--at", "choose_record#9", "--live-from"], "error: --at choose_record#9: "),
            (
                ["--at", "choose_record", "--live-from", "--fake", "nope=os:getcwd"],
                "error: --fake nope=os:getcwd: no boundary named 'nope'",
            ),
        ],
    )
    def test_an_unknown_step_names_the_option_it_was_given_to(
        self, good_run: rp.Run, args: list[str], message: str
    ) -> None:
        """An unknown --at step or --fake name: one line naming the option, exit 2."""
        result = CliRunner().invoke(
            main, ["fork", good_run.id, "--import", "replayable.demo.agent", *args]
        )
        assert result.exit_code == 2, result.output
        assert result.output.startswith(message)
        assert result.output.count("\n") == 1
        assert "override" not in result.output
        assert "live_from" not in result.output

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ([], "say what changes at the step"),
            (["--set-output", "{nope"], "not JSON"),
            (["--set-error", "NoSuchError"], "TYPE[:MESSAGE]"),
            (["--live-from", "--fake", "delete_record"], "NAME=module:function"),
        ],
    )
    def test_bad_input_is_one_line_and_exit_2(
        self, good_run: rp.Run, args: list[str], message: str
    ) -> None:
        """Missing or malformed options: exit 2 with what to do."""
        result = CliRunner().invoke(
            main,
            [
                "fork",
                good_run.id,
                "--import",
                "replayable.demo.agent",
                "--at",
                "choose_record",
                *args,
            ],
        )
        assert result.exit_code == 2
        assert message in result.output


class TestStepNames:
    def test_steps_sharing_a_bare_name_are_named_in_full(self) -> None:
        """Two boundaries both called 'create': the report names them module:create#N, and a
        bare 'create#1' is refused as ambiguous."""

        @rp.boundary(kind="llm", name="whatif_a:create")
        def create_a(x: int) -> int:
            return x + 1

        @rp.boundary(kind="llm", name="whatif_b:create")
        def create_b(x: int) -> int:
            return x * 2

        @rp.boundary(kind="agent", name="whatif_test:both")
        def both(x: int) -> int:
            return create_b(create_a(x))

        with rp.record(name="both") as run:
            both(3)
        with rp.replay(run.id, override={"whatif_a:create#1": 10}, live_kinds=("llm",)) as r:
            assert both(3) == 20
        assert [(c.how, c.step) for c in r.changes][:2] == [
            ("overridden", "whatif_a:create#1"),
            ("live", "whatif_b:create#1"),
        ]
        with pytest.raises(rp.UnknownBoundary, match="ambiguous"):
            rp.replay(run.id, override={"create#1": 10})
        steps = rp.drift(run.id, judge=None).steps
        assert [s.step for s in steps] == ["whatif_a:create#1", "whatif_b:create#1"]
