"""The one way memchat streams a reply from the LLM: parameters, tags, counters, the turn deadline and the
mapping of client errors to :class:`~memchat.backends.llm.BackendError` (used by the respond node and by the
stateless and user-memory server paths)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage

from memchat.backends import deadline
from memchat.backends.llm import classify_error, generation_params


def to_lc(messages: list[dict[str, str]]) -> list[BaseMessage]:
    """Chat dicts to LangChain messages."""
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](content=m["content"]) for m in messages]  # type: ignore[misc]


def stream_reply(eng: Any, messages: list[dict[str, str]], llm_params: Mapping[str, Any] | None, *,
                 kind: str) -> Iterator[AIMessageChunk]:
    """Stream the reply to ``messages`` (tagged ``memchat:<kind>``, counted as ``llm_calls_<kind>``). Under
    ``MEMCHAT_TURN_TIMEOUT`` the call gets only what the turn has left and raises
    :class:`~memchat.backends.deadline.TurnTimeout` past it; other failures raise ``BackendError``."""
    llm = eng.llm
    params = generation_params(eng.settings, llm_params)
    left = deadline.remaining()
    if left is not None:
        params["timeout"] = max(0.1, left)
    if params:
        llm = llm.bind(**params)
    eng.metrics.inc(f"llm_calls_{kind}")
    try:
        for chunk in llm.stream(to_lc(messages), config={"tags": [f"memchat:{kind}"]}):
            yield chunk  # type: ignore[misc]
            if left is not None and deadline.remaining() == 0.0:
                raise deadline.TurnTimeout(eng.settings.turn_timeout)
    except deadline.TurnTimeout:
        raise
    except Exception as exc:
        eng.metrics.inc("llm_failures")
        if left is not None and (deadline.remaining() or 0.0) < 0.05:  # cut by the turn's deadline
            raise deadline.TurnTimeout(eng.settings.turn_timeout) from exc
        raise classify_error(exc) from exc
