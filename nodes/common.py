"""Helpers the nodes share: ids from config, the verbatim window, message text."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig

from memchat.memory.namespaces import LEGACY_ANONYMOUS, thread_scope
from memchat.memory.prompt import Assembled, Turn, assemble, render_head
from memchat.memory.slots import describe_change, persona_of
from memchat.memory.state import Context

CONTEXT_KEYS = tuple(Context.__annotations__)  # user_id, persona, llm_params, request_context


def thread_id(config: RunnableConfig | None) -> str:
    """The thread of this run (``configurable.thread_id``)."""
    return str(((config or {}).get("configurable") or {}).get("thread_id") or "default")


def run_context(config: RunnableConfig | None, runtime: Any = None) -> Context:
    """The run's per-request values (:class:`~memchat.memory.state.Context`), converted in this one place:
    LangGraph's run context (``invoke(..., context={...})``, ``Runtime.context``) first, then ``configurable``,
    the entry of LangGraph Platform (``langgraph dev``) and LangServe clients."""
    ctx = getattr(runtime, "context", None)
    ctx = ctx if isinstance(ctx, Mapping) else vars(ctx) if ctx is not None and hasattr(ctx, "__dict__") else {}
    conf = (config or {}).get("configurable") or {}
    out: dict[str, Any] = {}
    for key in CONTEXT_KEYS:
        value = ctx.get(key) if ctx.get(key) not in (None, "", {}) else conf.get(key)
        if value not in (None, "", {}):
            out[key] = value
    return out  # type: ignore[return-value]


def user_id(state: Mapping[str, Any], config: RunnableConfig | None, runtime: Any = None) -> str:
    """The user of this run: the run context's ``user_id``, else the thread's user, else the thread's own scope
    (a thread without a user shares its profile and facts with no other thread)."""
    given = run_context(config, runtime).get("user_id")
    if given:
        return str(given)
    owner = state.get("user_id")
    if owner and owner != LEGACY_ANONYMOUS:
        return str(owner)
    return thread_scope(thread_id(config))


def text_of(m: AnyMessage) -> str:
    """Plain text of a message (joins text parts)."""
    c = m.content
    if isinstance(c, str):
        return c
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in c)


def current_message(state: Mapping[str, Any]) -> HumanMessage:
    """The user message of the turn being run."""
    for m in reversed(state.get("messages") or []):
        if isinstance(m, HumanMessage):
            return m
        if isinstance(m, AIMessage):
            break
    raise ValueError("a turn needs a new user message as the last message")


def completed_pairs(state: Mapping[str, Any]) -> list[tuple[HumanMessage, AIMessage]]:
    """The verbatim (L0) turns already answered, oldest first."""
    msgs = [m for m in (state.get("messages") or []) if isinstance(m, (HumanMessage, AIMessage))]
    pairs: list[tuple[HumanMessage, AIMessage]] = []
    pending: HumanMessage | None = None
    for m in msgs:
        if isinstance(m, HumanMessage):
            pending = m
        elif pending is not None:
            pairs.append((pending, m))
            pending = None
    return pairs


def l0_turns(state: Mapping[str, Any]) -> list[Turn]:
    """Completed L0 turns with the tails they were sent with."""
    pairs = completed_pairs(state)
    done = int(state.get("turn") or 0)
    metas = {int(m.get("turn", 0)): m for m in (state.get("l0_shown") or [])}
    out = []
    for i, (h, a) in enumerate(pairs):
        n = done - len(pairs) + i + 1
        meta: Any = metas.get(n) or {}
        out.append(Turn(turn=n, user=text_of(h), assistant=text_of(a), memories=list(meta.get("memories") or []),
                        notes=list(meta.get("notes") or []), date=str(meta.get("date") or "")))
    return out


def request_context(config: RunnableConfig | None, runtime: Any = None) -> str:
    """Text the caller added for this request only (the run context's ``request_context``)."""
    return str(run_context(config, runtime).get("request_context") or "").strip()


def with_context(message: str, context: str) -> str:
    """The new message with the per-request context block in front (volatile tail only, never stored)."""
    if not context:
        return message
    from memchat.prompts import load_prompt

    return load_prompt("request_context").strip().format(context=context) + "\n\n" + message


def turn_prompt(state: Mapping[str, Any], config: RunnableConfig | None, eng: Any, runtime: Any = None
                ) -> tuple[Assembled, list[Turn], list[str], str]:
    """The turn's prefix-stable prompt within budget: (assembled prompt, the L0 turns as sent, the slot
    notes of the tail, the turn's date and time)."""
    message = text_of(current_message(state))
    turns = l0_turns(state)
    if state.get("drop_shown_memories"):
        turns = [t.bare() for t in turns]
    head = state.get("frozen_head") or {}
    head_text = render_head(persona_of(state, eng.settings.persona), head.get("slots") or {}, head.get("l2"))
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")  # the turn's date and time, shown in the tail
    notes = [n for n in (describe_change(e) for e in state.get("slot_changes") or [] if not e.get("in_head")) if n]
    asm = assemble(settings=eng.settings, budget=eng.budget, head=head_text, l1=state.get("l1") or [],
                   turns=turns, message=with_context(message, request_context(config, runtime)),
                   memories=list(state.get("retrieved") or []), notes=notes, now=date)
    if asm.rebased:
        turns = [t.bare() for t in turns]
    return asm, turns, notes, date
