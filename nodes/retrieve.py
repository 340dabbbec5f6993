"""Node 4: hybrid retrieval for the new message, deduplicated against what the prompt already shows."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from memchat.backends.engine import Engine
from memchat.backends.vectorstore import msg_id
from memchat.memory.prompt import memory_line
from memchat.memory.recall_policy import asks, content_free
from memchat.memory.state import Context, State
from memchat.nodes.common import current_message, l0_turns, text_of, thread_id, user_id

log = logging.getLogger("memchat.retrieve")


def retrieve(state: State, config: RunnableConfig, runtime: Runtime[Context] | None = None, *,
             engine: Engine) -> dict[str, Any]:
    """Memories for this turn within what the memory budget has left (sticky blocks count)."""
    eng = engine
    s = eng.settings
    tid, uid = thread_id(config), user_id(state, config, runtime)
    query = text_of(current_message(state))
    turns = l0_turns(state)
    shown = {m["id"] for t in turns for m in t.memories if "id" in m}
    exclude = {msg_id(tid, 2 * t.turn + d) for t in turns for d in (-1, 0)}
    turn = int(state.get("turn") or 0) + 1
    exclude |= {msg_id(tid, 2 * turn - 1), msg_id(tid, 2 * turn)}  # the current turn (a retried one)
    if content_free(query):  # "ok thanks", "好的。": nothing to search for, nothing to spend
        return {"retrieved": [], "drop_shown_memories": False}
    sticky = sum(eng.tokenizer.count(memory_line(m)) + 1 for t in turns for m in t.memories)
    # A statement adds at most the small per-turn share; a question the large one. Blocks stay
    # (append-only) until the next compaction strips them for free; when the window's memory has no
    # room left for this turn's share, the blocks are dropped (a rebase: the L0 turns are re-sent).
    share = s.ask_memory_budget if asks(query) else s.turn_memory_budget
    room = s.memory_tokens - sticky
    budget = min(share, room)
    rebase = sticky > 0 and room < (share if share > s.turn_memory_budget else share // 2)
    if rebase:
        budget = share
    else:
        exclude |= shown
    try:
        items = eng.recall(query, user_id=uid, thread_id=tid, budget_tokens=budget, exclude_ids=exclude,
                           now=datetime.now(UTC))  # "yesterday", "上周" are read against the turn's date
    except Exception as exc:  # degrade: answer without recalled memories, and count it
        log.warning("retrieval failed: %s", exc)
        eng.metrics.inc("retrieval_failures")
        return {"retrieved": [], "drop_shown_memories": False, "counters": {"retrieval_failures": 1}}
    return {"retrieved": items, "drop_shown_memories": rebase}
