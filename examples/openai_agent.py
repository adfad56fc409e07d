"""A small tool-using agent on the OpenAI SDK, recorded with replayable and replayable offline.

    OPENAI_API_KEY=... python examples/openai_agent.py          # records a run
    replayable runs                                             # see it
    python examples/openai_agent.py --replay RUN_ID             # replays it, no network

Works with any OpenAI-compatible server (``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import replayable as rp

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@rp.boundary(kind="tool")
def get_weather(city: str) -> str:
    """A stand-in weather tool (a real one would call a weather API)."""
    return f"{city}: {15 + len(city)}°C, clear"


class WeatherAgent:
    """Asks the model, runs the tools it calls, and returns its final answer."""

    def __init__(self, client: Any, model: str = "gpt-4o-mini") -> None:
        self.client = client
        self.model = model

    @rp.boundary(kind="agent")
    def run(self, question: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        for _ in range(5):
            resp = self.client.chat.completions.create(
                model=self.model, messages=messages, tools=TOOLS, temperature=0.7
            )
            msg = resp.choices[0].message
            if not msg.tool_calls:
                return str(msg.content or "")
            messages.append(msg.model_dump(exclude_none=True))
            for call in msg.tool_calls:
                result = get_weather(**json.loads(call.function.arguments))
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        return "gave up"


def main(argv: list[str]) -> None:
    import openai

    agent = WeatherAgent(rp.instrument(openai.OpenAI()))
    if len(argv) > 2 and argv[1] == "--replay":
        with rp.replay(argv[2]) as r:
            answer = agent.run("What should I wear in Paris today?")
        print(answer, "\n", r.report())
        return
    with rp.record(name="openai-agent") as run:
        answer = agent.run("What should I wear in Paris today?")
    print(answer, "\nrecorded run", run.id)


if __name__ == "__main__":
    main(sys.argv)
