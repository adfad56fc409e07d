"""LangChain values as JSON and back, and as keyed: shared by the LangChain and LangGraph
integrations.

:class:`LangChainCodec` turns messages, chat results and generation chunks, documents and
LangGraph's commands into JSON and rebuilds LangChain's own types from it; :func:`jsonable` and
:func:`message_view` give the view of a value that goes into a call's key (no random ids, no
response metadata, no reprs). Re-exported by :mod:`replayable.integrations.langchain`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replayable import canonical
from replayable.errors import Unserializable

__all__ = ["CODEC", "LangChainCodec", "jsonable", "message_view"]


class LangChainCodec:
    """JSON for LangChain and LangGraph values, and back to their own types.

    Messages (``{"$message": ...}``), chat results and generation chunks, documents, LangGraph's
    ``Command`` / ``Send`` / ``Overwrite`` / ``Interrupt``, tuples; dicts and lists recursively.
    """

    def encode(self, value: Any) -> Any:
        from langchain_core.documents import Document
        from langchain_core.messages import BaseMessage, message_to_dict
        from langchain_core.outputs import ChatGeneration, ChatResult

        if isinstance(value, BaseMessage):
            return {"$message": message_to_dict(value)}
        if isinstance(value, ChatResult):
            return {
                "$result": {
                    "generations": [self.encode(g) for g in value.generations],
                    "llm_output": self.encode(value.llm_output),
                }
            }
        if isinstance(value, ChatGeneration):  # and ChatGenerationChunk
            tag = "$chunk" if type(value).__name__ == "ChatGenerationChunk" else "$generation"
            return {
                tag: {
                    "message": self.encode(value.message),
                    "generation_info": self.encode(value.generation_info),
                }
            }
        if isinstance(value, Document):
            return {"$document": value.model_dump(mode="json")}
        if isinstance(value, dict):
            return {k: self.encode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, tuple):
            return {"$tuple": [self.encode(v) for v in value]}
        if type(value).__module__.startswith("langgraph."):
            return self._encode_graph(value)
        return value

    def _encode_graph(self, value: Any) -> Any:
        from langgraph.types import Command, Interrupt, Overwrite, Send

        if isinstance(value, Command):
            return {
                "$command": {
                    "graph": value.graph,
                    "update": self.encode(value.update),
                    "resume": self.encode(value.resume),
                    "goto": self.encode(value.goto),
                }
            }
        if isinstance(value, Send):
            timeout = value.timeout
            return {
                "$send": {
                    "node": value.node,
                    "arg": self.encode(value.arg),
                    "timeout": None if timeout is None else canonical.canonicalize(timeout),
                }
            }
        if isinstance(value, Overwrite):
            return {"$overwrite": self.encode(value.value)}
        if isinstance(value, Interrupt):
            return {"$interrupt": {"value": self.encode(value.value), "id": value.id}}
        return value

    def decode(self, data: Any) -> Any:
        if isinstance(data, list):
            return [self.decode(v) for v in data]
        if not isinstance(data, dict):
            return data
        if len(data) == 1:
            tag, body = next(iter(data.items()))
            if tag.startswith("$"):
                decoder = _DECODERS.get(tag)
                if decoder is not None:
                    return decoder(self, body)
        return {k: self.decode(v) for k, v in data.items()}


def _d_message(codec: LangChainCodec, body: Any) -> Any:
    from langchain_core.messages import messages_from_dict

    return messages_from_dict([body])[0]


def _d_result(codec: LangChainCodec, body: Any) -> Any:
    from langchain_core.outputs import ChatResult

    return ChatResult(
        generations=[codec.decode(g) for g in body["generations"]],
        llm_output=codec.decode(body.get("llm_output")),
    )


def _d_generation(codec: LangChainCodec, body: Any) -> Any:
    from langchain_core.outputs import ChatGeneration

    return ChatGeneration(
        message=codec.decode(body["message"]), generation_info=body.get("generation_info")
    )


def _d_chunk(codec: LangChainCodec, body: Any) -> Any:
    from langchain_core.outputs import ChatGenerationChunk

    return ChatGenerationChunk(
        message=codec.decode(body["message"]), generation_info=body.get("generation_info")
    )


def _d_document(codec: LangChainCodec, body: Any) -> Any:
    from langchain_core.documents import Document

    return Document.model_validate(body)


def _d_tuple(codec: LangChainCodec, body: Any) -> Any:
    return tuple(codec.decode(v) for v in body)


def _d_command(codec: LangChainCodec, body: Any) -> Any:
    from langgraph.types import Command

    goto = codec.decode(body.get("goto"))
    return Command(
        graph=body.get("graph"),
        update=codec.decode(body.get("update")),
        resume=codec.decode(body.get("resume")),
        goto=goto if goto is not None else (),
    )


def _d_send(codec: LangChainCodec, body: Any) -> Any:
    from langgraph.types import Send, TimeoutPolicy

    timeout = body.get("timeout")
    return Send(
        body["node"],
        codec.decode(body.get("arg")),
        timeout=TimeoutPolicy(**timeout) if isinstance(timeout, dict) else None,
    )


def _d_overwrite(codec: LangChainCodec, body: Any) -> Any:
    from langgraph.types import Overwrite

    return Overwrite(codec.decode(body))


def _d_interrupt(codec: LangChainCodec, body: Any) -> Any:
    from langgraph.types import Interrupt

    return Interrupt(value=codec.decode(body.get("value")), id=body.get("id"))


_DECODERS: dict[str, Callable[[LangChainCodec, Any], Any]] = {
    "$message": _d_message,
    "$result": _d_result,
    "$generation": _d_generation,
    "$chunk": _d_chunk,
    "$document": _d_document,
    "$tuple": _d_tuple,
    "$command": _d_command,
    "$send": _d_send,
    "$overwrite": _d_overwrite,
    "$interrupt": _d_interrupt,
}

CODEC = LangChainCodec()

# -- input views ---------------------------------------------------------------------------------

# Message fields that never reach a provider, or differ on every run: left out of the key.
_MESSAGE_NOISE = frozenset({"id", "response_metadata", "usage_metadata"})


def message_view(message: Any) -> Any:
    """A message as keyed: its type and content fields, without ids and response metadata."""
    from langchain_core.messages import BaseMessage

    if not isinstance(message, BaseMessage):
        return jsonable(message)
    data = message.model_dump(mode="json", exclude=set(_MESSAGE_NOISE))
    return {k: v for k, v in data.items() if v not in (None, {}, [])} | {"type": message.type}


def jsonable(value: Any) -> Any:
    """``value`` in JSON terms for an input snapshot: messages as views, schemas as JSON Schema,
    anything else that does not serialize as a ``{"$object": type}`` marker (never a repr)."""
    from langchain_core.messages import BaseMessage

    if isinstance(value, BaseMessage):
        return message_view(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        return {"$schema": value.model_json_schema()}
    try:
        canonical.canonicalize(value, drop=())
    except Unserializable:
        cls = value if isinstance(value, type) else type(value)
        return {"$object": f"{cls.__module__}.{cls.__qualname__}"}
    return value
