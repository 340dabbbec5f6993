"""The LLM tier of slot extraction: a second call after the reply, applied before the next turn.

After a turn is saved, :func:`schedule` starts one call in a background worker (the client already has
the reply; the hot path keeps its single LLM call). Its prompt is the turn's response prompt, the reply
as an assistant message and a short instruction (``prompts/extract_slots.txt``), so on a prefix cache
(SGLang's radix cache) only the instruction and the JSON answer are new tokens. The answer is
schema-constrained JSON with the rules tier's operations; each is checked by :mod:`memchat.memory.llm_ops`
(grounded in the user's own message, the same guards as the rules tier), and an operation on a key
the rules tier already read from that message is dropped (the precise tier wins).

The result is keyed by the thread, the turn and what the turn sent and got back, and the next turn's
``extract_facts`` node takes it (waiting for it when it is still running), before that turn's own
rules-tier operations. After a rollback or another replica's turn the key differs and the result is
not used. Nothing is checkpointed: a restart loses at most the pending operations of one turn.
A failed or invalid extraction is logged and counted (``extraction_failures``); it never fails a turn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.constants import TAG_NOSTREAM

from memchat.backends.llm import json_schema_format, response_format_for
from memchat.backends.precompute import MISSING, PENDING, SummaryCache
from memchat.memory.llm_ops import OPS_SCHEMA, check, might_state, parse_operations
from memchat.memory.rules import extract_rules
from memchat.prompts import load_prompt

log = logging.getLogger("memchat.extraction")
MAX_TOKENS = 384
_caches: weakref.WeakKeyDictionary[Any, SummaryCache] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_ROLES: dict[str, Any] = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}


def cache_for(engine: Any) -> SummaryCache:
    """The pending extractions of an engine."""
    with _lock:
        cache = _caches.get(engine)
        if cache is None:
            cache = _caches[engine] = SummaryCache()
        return cache


def turn_key(thread_id: str, context: dict[str, Any] | None) -> str | None:
    """Key of a turn's extraction: the thread, the turn, its prompt's last message and its reply."""
    ctx = context or {}
    if ctx.get("extraction_key"):  # a slim checkpointed context (the full prompt is in the last-turn view)
        return str(ctx["extraction_key"])
    msgs = ctx.get("messages") or []
    if not ctx.get("turn") or not msgs:
        return None
    raw = json.dumps([thread_id, ctx["turn"], msgs[-1], ctx.get("reply", "")], ensure_ascii=False, default=str)
    return hashlib.sha1(raw.encode()).hexdigest()


def extraction_messages(context: dict[str, Any]) -> list[BaseMessage]:
    """The response prompt, the reply, the instruction: a prefix of the response prompt's tokens and more."""
    msgs = list(context["messages"]) + [{"role": "assistant", "content": str(context.get("reply", ""))},
                                        {"role": "user", "content": load_prompt("extract_slots").strip()}]
    return [_ROLES[m["role"]](content=m["content"]) for m in msgs]


def extract(engine: Any, context: dict[str, Any], user_text: str) -> list[dict[str, Any]]:
    """Run the extraction call; the checked operations as candidate dicts ([] and counted on failure)."""
    engine.metrics.inc("llm_calls_extraction")
    try:
        fmt = response_format_for(engine.settings, json_schema_format("slot_operations", OPS_SCHEMA))
        llm = engine.llm.bind(response_format=fmt, max_completion_tokens=MAX_TOKENS, temperature=0)
        msg = llm.invoke(extraction_messages(context), config={"tags": ["memchat:extraction", TAG_NOSTREAM]})
        raw = parse_operations(str(msg.content))
    except Exception as exc:  # a failed or invalid extraction never fails a turn
        log.warning("LLM slot extraction failed (%s); the rules tier's slots stand", type(exc).__name__)
        engine.metrics.inc("extraction_failures")
        return []
    ruled = {c.key for c in extract_rules(user_text, "user")}
    out, rejected = [], 0
    for op in raw:
        cand = check(op, user_text)
        if cand is None:
            rejected += 1
        elif cand.key not in ruled:
            out.append(dict(cand.as_dict(), tier="llm"))
    if rejected:
        engine.metrics.inc("extraction_rejected", rejected)
    return out


def _user_text(values: dict[str, Any]) -> str:
    for m in reversed(values.get("messages") or []):
        if isinstance(m, HumanMessage):
            return str(m.content)
    return ""


def schedule(engine: Any, thread_id: str, values: dict[str, Any]) -> None:
    """Start the extraction of a saved turn in the background (no-op when the tier is off)."""
    ctx = dict(values.get("last_prompt") or {})
    key = turn_key(thread_id, ctx)
    if key is None or not engine.settings.extraction_enabled:
        return
    text = _user_text(values)
    if not might_state(text):  # only questions: the checks would reject anything the model said
        engine.metrics.inc("extraction_skipped")
        return
    cache_for(engine).submit(key, lambda: extract(engine, ctx, text))


def take(engine: Any, thread_id: str, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The previous turn's operations, when they were computed for exactly that turn (waits while running)."""
    if not engine.settings.extraction_enabled:
        return []
    key = turn_key(thread_id, state.get("last_prompt"))
    if key is None:
        return []
    # kept (bounded, oldest dropped): a next turn that fails and is retried finds them again
    res = cache_for(engine).get(key, wait=engine.settings.llm_timeout, keep=True)
    return [] if res is MISSING or res is PENDING else list(res)
