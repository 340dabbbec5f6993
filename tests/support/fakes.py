"""A scripted fake chat model for unit tests: streams, reports usage, answers JSON mode with JSON."""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import BaseMessage
from pydantic import Field

from memchat.bench.common import ScriptChatModel


class ScriptedChatModel(ScriptChatModel):
    """Replies from a script (or an echo of the last user line); JSON when a response_format is bound.

    ``fail_kinds`` makes calls of a kind ("respond", "summary", "extraction") raise, ``bad_json`` returns
    invalid JSON for summaries. Slot extraction calls (schema ``slot_operations``) answer from ``extractions``
    (raw texts, in order), else no operations. Every call is recorded in ``calls`` as (kind, messages).
    """

    replies: list[str] = Field(default_factory=list)
    calls: list[tuple[str, list[BaseMessage]]] = Field(default_factory=list)
    fail_kinds: set[str] = Field(default_factory=set)
    bad_json: bool = False
    summary_text: str = "They talked about it."
    facts: list[str] = Field(default_factory=list)
    extractions: list[str] = Field(default_factory=list)
    extraction_gate: Any = None  # a threading.Event the extraction calls wait for (up to 10 s)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _kind(self, kwargs: dict[str, Any]) -> str:
        fmt = kwargs.get("response_format") or {}
        if (fmt.get("json_schema") or {}).get("name") == "slot_operations":
            return "extraction"
        return "summary" if fmt else "respond"

    def _text(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        kind = self._kind(kwargs)
        self.calls.append((kind, list(messages)))
        if kind in self.fail_kinds:
            raise TimeoutError(f"scripted failure of a {kind} call")
        if kind == "extraction":
            if self.extraction_gate is not None:
                self.extraction_gate.wait(10)
            return self.extractions.pop(0) if self.extractions else '{"operations": []}'
        if kind == "summary":
            if self.bad_json:
                return "this is {not json"
            props = (kwargs["response_format"].get("json_schema") or {}).get("schema", {}).get("properties", {})
            if "summary" in props:
                return json.dumps({"summary": self.summary_text, "facts": self.facts})
            return json.dumps({"topics": ["t"], "decisions": [], "open_questions": [], "facts": ["f"]})
        if self.replies:
            return self.replies.pop(0)
        last = str(messages[-1].content).splitlines()[-1] if messages else ""
        return f"reply to: {last[:60]}"

    def kinds(self) -> list[str]:
        """Kinds of the calls made so far."""
        return [k for k, _ in self.calls]
