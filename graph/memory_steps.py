"""The memory steps of a turn, shared by memchat's graph, :func:`memchat.graph.memory_graph.memory_graph` and
:class:`memchat.graph.agent_middleware.MemchatMiddleware` (one implementation):

* :func:`add_memory_nodes` wires extract_facts → update_slots → [summarize] → retrieve into a graph;
* :func:`prepare` runs the same nodes in order on a plain state dict (for middleware);
* :func:`plan_prompt` assembles the prefix-stable prompt (frozen head, L1, verbatim L0, memory + message);
* :func:`with_turn` extends it with the turn's tool calls and results (long results truncated with a
  visible marker so the budget holds; each call's prompt is a prefix of the next one);
* :func:`finish` is the turn's bookkeeping after the final reply, and :func:`memchat.backends.memory_api.remember`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, cast

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.graph.message import add_messages

from memchat.backends.engine import Engine
from memchat.backends.llm import cached_tokens
from memchat.backends.memory_api import remember
from memchat.memory.prompt import prefix_reuse
from memchat.memory.state import TurnMeta, merge_counters
from memchat.nodes import extract_facts, retrieve, should_summarize, summarize, update_slots
from memchat.nodes.common import current_message, thread_id, turn_prompt, user_id

MEMORY_NODES = ("extract_facts", "update_slots", "summarize", "retrieve")
TOOL_MARGIN = 64  # tokens kept free after each tool result (the next call's tool-call message)


def add_memory_nodes(g: StateGraph[Any, Any, Any, Any], bind: Callable[[Any], Any], route: Callable[[Any], str], then: str) -> None:
    """Add the four memory nodes to ``g`` (START → extract_facts … retrieve → ``then``)."""
    from langgraph.graph import START

    g.add_node("extract_facts", bind(extract_facts))
    g.add_node("update_slots", bind(update_slots))
    g.add_node("summarize", bind(summarize))
    g.add_node("retrieve", bind(retrieve))
    g.add_edge(START, "extract_facts")
    g.add_edge("extract_facts", "update_slots")
    g.add_conditional_edges("update_slots", route, {"summarize": "summarize", "retrieve": "retrieve"})
    g.add_edge("summarize", "retrieve")
    g.add_edge("retrieve", then)


def apply_update(state: Mapping[str, Any], update: Mapping[str, Any] | None) -> dict[str, Any]:
    """``state`` with a node's update applied through memchat's reducers (messages, counters)."""
    out = dict(state)
    for k, v in (update or {}).items():
        if k == "messages":
            out[k] = add_messages(list(out.get(k) or []), v)  # type: ignore[arg-type]
        elif k == "counters":
            out[k] = merge_counters(out.get(k), v)
        else:
            out[k] = v
    return out


def prepare(state: Mapping[str, Any], config: RunnableConfig, engine: Engine, store: Any) -> dict[str, Any]:
    """Run extract_facts → update_slots → [summarize] → retrieve on ``state`` (its last message is the new one)."""
    rt: Any = SimpleNamespace(store=store)
    s = apply_update(state, extract_facts(cast(Any, state), config, engine=engine))
    s = apply_update(s, update_slots(cast(Any, s), config, rt, engine=engine))
    if should_summarize(cast(Any, s), engine.settings) == "summarize":
        s = apply_update(s, summarize(cast(Any, s), config, engine=engine))
    return apply_update(s, retrieve(cast(Any, s), config, engine=engine))


def plan_prompt(state: Mapping[str, Any], config: RunnableConfig, engine: Engine) -> dict[str, Any]:
    """The turn's prompt (chat dicts) and what :func:`finish` needs to keep the next prompt append-only."""
    asm, turns, notes, date = turn_prompt(state, config, engine)
    metas = [TurnMeta(turn=t.turn, memories=t.memories, notes=t.notes, date=t.date) for t in turns]
    return {"messages": asm.messages, "sections": asm.sections, "memories": asm.memories, "notes": notes,
            "date": date, "metas": metas, "rebased": asm.rebased, "dropped_turns": asm.dropped_turns,
            "truncated": asm.truncated_message, "started": time.time()}


def to_messages(plan: Mapping[str, Any], system: str | None = None) -> list[BaseMessage]:
    """The planned prompt as LangChain messages (``system``: the agent's own system prompt, put first)."""
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    out: list[BaseMessage] = [kinds[m["role"]](content=m["content"]) for m in plan.get("messages") or []]  # type: ignore[misc]
    if system and out and isinstance(out[0], SystemMessage):
        out[0] = SystemMessage(content=system.strip() + "\n\n" + str(out[0].content))
    return out


def turn_messages(messages: Sequence[AnyMessage], human_id: str | None) -> list[AnyMessage]:
    """The messages of the running turn after its user message (tool calls, tool results, replies)."""
    msgs = list(messages)
    idx = next((i for i, m in enumerate(msgs) if human_id and m.id == human_id), None)
    if idx is None:
        idx = max((i for i, m in enumerate(msgs) if isinstance(m, HumanMessage)), default=len(msgs) - 1)
    return msgs[idx + 1:]


def _tokens(engine: Engine, m: BaseMessage) -> int:
    calls = json.dumps(getattr(m, "tool_calls", None) or [], ensure_ascii=False, default=str)
    return engine.tokenizer.count(str(m.content)) + (engine.tokenizer.count(calls) if calls != "[]" else 0) + 8


def with_turn(engine: Engine, prompt: list[BaseMessage], turn: Sequence[AnyMessage]) -> list[BaseMessage]:
    """``prompt`` + the turn's messages, in order; a tool result longer than what the budget has left
    (or than ``MEMCHAT_MAX_MESSAGE_TOKENS``) is cut with a ``[… truncated N tokens …]`` marker. Each cut
    depends only on what precedes it, so every call's prompt extends the previous call's."""
    used = engine.budget.messages([{"role": str(m.type), "content": str(m.content)} for m in prompt])
    left = engine.settings.prompt_limit - used
    out = list(prompt)
    for m in turn:
        if isinstance(m, ToolMessage):
            cap = max(16, min(engine.settings.max_message_tokens, left - TOOL_MARGIN))
            text = m.content if isinstance(m.content, str) else json.dumps(m.content, ensure_ascii=False)
            cut = engine.tokenizer.truncate(text, cap - 8)
            if cut != text:
                m = m.model_copy(update={"content": cut})
        out.append(m)
        left -= _tokens(engine, m)
    return out


def finish(state: Mapping[str, Any], config: RunnableConfig, engine: Engine, store: Any, plan: Mapping[str, Any],
           reply: AIMessage, turn_msgs: Sequence[BaseMessage], *, human: HumanMessage | None = None) -> dict[str, Any]:
    """The turn's bookkeeping once the final reply exists (what respond returns), after writing the turn
    to memory (:func:`memchat.backends.memory_api.remember`: messages, tool results, facts, audit, profile)."""
    tid, uid = thread_id(config), user_id(state, config)
    turn = int(state.get("turn") or 0) + 1
    human = human or current_message(state)
    text = str(reply.content) if isinstance(reply.content, str) else "".join(
        p.get("text", "") for p in reply.content if isinstance(p, dict))
    final = AIMessage(content=text, id=f"ai:{tid}:{turn}", usage_metadata=reply.usage_metadata,
                      response_metadata={"turn": turn})
    remember([human, *turn_msgs, final], uid, tid, turn=turn, engine=engine, store=store, state=state,
             date=str(plan.get("date") or ""))
    metas = list(plan.get("metas") or []) + [TurnMeta(turn=turn, memories=list(plan.get("memories") or []),
                                                      notes=list(plan.get("notes") or []), date=str(plan.get("date")))]
    prev = state.get("last_prompt") or {}
    reuse = prefix_reuse(engine.budget, prev.get("messages"), prev.get("reply"), list(plan.get("messages") or [])) \
        if prev else 0.0
    usage: dict[str, Any] = dict(reply.usage_metadata or {})
    return {
        "messages": [final], "turn": turn, "l0_shown": metas, "slot_candidates": [], "llm_facts_to_store": [],
        "drop_shown_memories": False,
        "last_prompt": {"turn": turn, "messages": list(plan.get("messages") or []), "reply": text,
                    "sections": plan.get("sections"), "cached_tokens": cached_tokens(reply),
                    "prefix_reuse": round(reuse, 4), "usage": usage, "dropped_turns": plan.get("dropped_turns"),
                    "rebased": plan.get("rebased"), "truncated": plan.get("truncated"),
                    "tool_messages": sum(isinstance(m, ToolMessage) for m in turn_msgs),
                    "latency_s": round(time.time() - float(plan.get("started") or time.time()), 4),
                    "retrieved_ids": [m.get("id") for m in plan.get("memories") or []]},
        "counters": {"turns": 1, "prompt_tokens": int(usage.get("input_tokens") or 0),
                     "cached_tokens": int(cached_tokens(reply) or 0)},
    }
