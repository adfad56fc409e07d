"""A LangGraph agent that deletes customer records, recorded with replayable.

The model picks which record to delete; sometimes it picks the wrong one. Replaying the run
serves every node from the recording, so the investigation deletes nothing.

    OPENAI_API_KEY=... python examples/langgraph_agent.py       # records a run
    python examples/langgraph_agent.py --replay RUN_ID          # replays it, nothing deleted
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

import replayable as rp

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "delete_record",
            "description": "Delete a customer record by id",
            "parameters": {
                "type": "object",
                "properties": {"record_id": {"type": "integer"}},
                "required": ["record_id"],
            },
        },
    }
]
CUSTOMERS = {"1": "Alice", "2": "Bob", "3": "Carol", "4": "Dan"}


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def seed_db(path: Path) -> None:
    """Write the demo customer table."""
    path.write_text(json.dumps(CUSTOMERS))


@rp.boundary(kind="tool", side_effects=True)
def delete_record(record_id: int, db: str) -> str:
    """Delete one customer record (a side effect replay must never repeat)."""
    rows = json.loads(Path(db).read_text())
    name = rows.pop(str(record_id), None)
    Path(db).write_text(json.dumps(rows))
    return f"deleted record {record_id} ({name})" if name else f"no record {record_id}"


def _to_openai(m: AnyMessage) -> dict[str, Any]:
    if isinstance(m, HumanMessage):
        return {"role": "user", "content": m.content}
    if isinstance(m, ToolMessage):
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    out: dict[str, Any] = {"role": "assistant", "content": m.content or None}
    if isinstance(m, AIMessage) and m.tool_calls:
        out["tool_calls"] = [
            {
                "id": tc["id"],
                "type": "function",
                "function": {"name": tc["name"], "arguments": json.dumps(tc["args"])},
            }
            for tc in m.tool_calls
        ]
    return out


def build(client: Any, db: Path, model: str = "gpt-4o-mini") -> Any:
    """The compiled, instrumented graph: agent -> tools -> agent -> END."""

    def agent(state: State) -> dict[str, Any]:
        resp = client.chat.completions.create(
            model=model, messages=[_to_openai(m) for m in state["messages"]], tools=TOOLS
        )
        msg = resp.choices[0].message
        calls = [
            {"name": c.function.name, "args": json.loads(c.function.arguments), "id": c.id}
            for c in msg.tool_calls or ()
        ]
        return {"messages": [AIMessage(content=msg.content or "", tool_calls=calls)]}

    def tools(state: State) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        out = [
            ToolMessage(
                content=delete_record(int(tc["args"]["record_id"]), str(db)),
                tool_call_id=str(tc["id"]),
            )
            for tc in last.tool_calls
        ]
        return {"messages": out}

    def route(state: State) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    graph = StateGraph(State)
    graph.add_node("agent", agent)
    graph.add_node("tools", tools)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    return rp.instrument(graph.compile(name="records"))


def main(argv: list[str]) -> None:
    import openai

    db = Path("customers.json")
    if not db.exists():
        seed_db(db)
    app = build(openai.OpenAI(), db)
    question = {"messages": [HumanMessage("Please delete Bob's record.")]}
    if len(argv) > 2 and argv[1] == "--replay":
        with rp.replay(argv[2]) as r:
            app.invoke(question)
        print(r.report(), "\nrecords left:", db.read_text())
        return
    with rp.record(name="langgraph-agent") as run:
        final = app.invoke(question)
    print(final["messages"][-1].content, "\nrecorded run", run.id)


if __name__ == "__main__":
    main(sys.argv)
