"""A scripted tool-calling chat model for agent tests (``create_agent`` binds tools to it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from pydantic import Field

Policy = Callable[[list[BaseMessage]], AIMessage]


def tool_policy(plan: Callable[[str], list[tuple[str, dict[str, Any]]]]) -> Policy:
    """A policy: the tool calls ``plan(user text)`` returns, one per model call, then a final reply that
    quotes the last tool result (or the user's message)."""
    def policy(messages: list[BaseMessage]) -> AIMessage:
        k = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
        asked = str(messages[k].content).split("\n\n")[-1]
        done = [m for m in messages[k + 1:] if isinstance(m, ToolMessage)]
        calls = plan(asked)
        if len(done) < len(calls):
            name, args = calls[len(done)]
            return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{len(done)}",
                                                      "type": "tool_call"}])
        last = str(done[-1].content)[:80] if done else asked[:80]
        return AIMessage(content=f"Done: {last}")
    return policy


class ToolScriptedModel(BaseChatModel):
    """Answers by ``policy(messages)``; records every call's messages in ``calls``; ``fail_at`` makes the
    n-th call (1-based) raise."""

    policy: Any
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    fail_at: set[int] = Field(default_factory=set)

    @property
    def _llm_type(self) -> str:
        return "tool-scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[Any, Any]:  # type: ignore[override]
        return self

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        self.calls.append(list(messages))
        if len(self.calls) in self.fail_at:
            raise TimeoutError("scripted model failure")
        msg = self.policy(list(messages))
        n_in = sum(len(str(m.content).split()) for m in messages)
        msg.usage_metadata = {"input_tokens": n_in, "output_tokens": 3, "total_tokens": n_in + 3}
        return ChatResult(generations=[ChatGeneration(message=msg)])
