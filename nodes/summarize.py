"""Node 3 (conditional): compact L0 into L1 in steps, fold old L1 into the L2 JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from langchain_core.messages import HumanMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig
from langgraph.constants import TAG_NOSTREAM

from memchat.backends.engine import Engine
from memchat.backends.llm import json_schema_format, response_format_for
from memchat.backends.precompute import MISSING, PENDING, cache_for, l1_key, l2_key
from memchat.memory.prompt import Turn
from memchat.memory.rules import sentences
from memchat.memory.slots import grounded, head_snapshot, persona_of
from memchat.memory.state import State
from memchat.nodes.common import completed_pairs, l0_turns, text_of, thread_id
from memchat.prompts import load_prompt
from memchat.settings import Settings

log = logging.getLogger("memchat.summarize")

L1_SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"},
                                             "facts": {"type": "array", "items": {"type": "string"}}},
             "required": ["summary", "facts"]}
L2_KEYS = ("topics", "decisions", "open_questions", "facts")
L2_SCHEMA = {"type": "object", "properties": {k: {"type": "array", "items": {"type": "string"}} for k in L2_KEYS},
             "required": list(L2_KEYS)}


def l1_coverage(l1: list[dict[str, Any]]) -> int:
    """Turns covered by the L1 lines."""
    return sum(int(b["to_turn"]) - int(b["from_turn"]) + 1 for b in l1)


def should_summarize(state: State, settings: Settings) -> str:
    """Route after update_slots: summarize when L0 holds 2N turns, L1 covers more than the L2 threshold + N turns,
    or L2 was asked for."""
    n = settings.l0_turns
    if len(completed_pairs(state)) >= 2 * n or state.get("l2_requested"):
        return "summarize"
    if l1_coverage(state.get("l1") or []) >= settings.l2_threshold + n:
        return "summarize"
    return "retrieve"


def _call_json(eng: Engine, prompt: str, name: str, schema: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    fmt = response_format_for(eng.settings, json_schema_format(name, schema))
    llm = eng.llm.bind(response_format=fmt, max_completion_tokens=max_tokens, temperature=0)
    msg = llm.invoke([HumanMessage(content=prompt)], config={"tags": ["memchat:summary", TAG_NOSTREAM]})  # not reply tokens
    data = json.loads(text_of(msg))
    if not isinstance(data, dict):
        raise ValueError("summary is not a JSON object")
    return data


def l2_take(l1: list[dict[str, Any]], threshold: int, *, everything: bool = False) -> list[dict[str, Any]]:
    """The oldest L1 lines folded into L2 at once: until they cover ``threshold`` turns (or all)."""
    take, covered = [], 0
    for b in l1:
        if covered >= threshold and not everything:
            break
        take.append(b)
        covered += int(b["to_turn"]) - int(b["from_turn"]) + 1
    return take


def ready(eng: Engine, key: str, background: bool, must: bool, schedule: Callable[[], None]) -> Any:
    """A summary computed in the background: the result, ``PENDING`` (defer: it is on its way, or was
    started just now) or ``MISSING`` (compute it now: no background, or the compaction cannot wait)."""
    if not background:
        return MISSING
    res = cache_for(eng).get(key, wait=eng.settings.llm_timeout if must else 0.0)
    if res is MISSING and not must:
        schedule()  # e.g. after a restart: recomputed in the background, applied on a later turn
        return PENDING
    if res is PENDING:  # still running: fold it a turn later, unless L0 cannot grow further
        return MISSING if must else PENDING
    return res


def fallback_summary(turns_text: list[str], max_chars: int = 160) -> str:
    """Extractive stand-in when the LLM summary fails: the first user sentence of each turn."""
    firsts = [(sentences(t) or [t])[0] for t in turns_text if t.strip()]
    out = " / ".join(firsts)
    return out if len(out) <= max_chars else out[: max_chars - 1] + "…"


def summarize_l1(eng: Engine, turns: list[tuple[int, str, str]]) -> tuple[str, list[str], bool]:
    """One-sentence summary of a block of turns (+ grounded LLM facts). Returns (text, facts, ok)."""
    block = "\n".join(f"[turn {n}] user: {u}\n[turn {n}] assistant: {a}" for n, u, a in turns)
    source = "\n".join(u for _, u, _ in turns)
    eng.metrics.inc("llm_calls_summary")
    try:
        data = _call_json(eng, load_prompt("summarize_l1").format(turns=block), "l1_summary", L1_SCHEMA, 96)
        summary = " ".join(str(data.get("summary", "")).split())
        if not summary:
            raise ValueError("empty summary")
        facts = [str(f) for f in data.get("facts") or [] if isinstance(f, str)]
        facts = [f for f in facts if grounded({"value": f}, source)] if eng.settings.extraction_enabled else []
        return summary[:300], facts, True
    except Exception as exc:  # the turn never fails because of a summary
        log.warning("L1 summary failed (%s); using an extractive fallback", type(exc).__name__)
        eng.metrics.inc("summary_failures")
        if eng.settings.extraction_enabled:  # the same call extracts the facts: they are lost too
            eng.metrics.inc("extraction_failures")
        return fallback_summary([u for _, u, _ in turns]), [], False


def summarize_l2(eng: Engine, l2: dict[str, Any] | None, lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Merge L1 lines into the structured L2 JSON; ``None`` on failure."""
    text = "\n".join(f"- turns {b['from_turn']}–{b['to_turn']}: {b['text']}" for b in lines)
    eng.metrics.inc("llm_calls_summary")
    try:
        data = _call_json(eng, load_prompt("summarize_l2").format(
            l2=json.dumps(l2 or {}, ensure_ascii=False), lines=text), "l2_summary", L2_SCHEMA, 384)
        out: dict[str, Any] = {k: [str(x) for x in (data.get(k) or []) if isinstance(x, (str, int, float))][:8] for k in L2_KEYS}
        out["covers_turns"] = [int(lines[0]["from_turn"]) if not l2 else int((l2.get("covers_turns") or [1])[0]),
                               int(lines[-1]["to_turn"])]
        return out
    except Exception as exc:
        log.warning("L2 summary failed (%s); L1 lines kept", type(exc).__name__)
        eng.metrics.inc("summary_failures")
        return None


def summarize(state: State, config: RunnableConfig, *, engine: Engine) -> dict[str, Any]:
    """Fold the oldest N verbatim turns into one L1 line; fold old L1 lines into L2 when due."""
    eng = engine
    s = eng.settings
    n = s.l0_turns
    update: dict[str, Any] = {"l2_requested": False}
    counters: dict[str, int] = {}
    l1 = list(state.get("l1") or [])
    l2 = state.get("l2")
    turns = l0_turns(state)
    pairs = completed_pairs(state)
    pending = list(state.get("llm_facts_to_store") or [])
    tid = thread_id(config)
    bg = bool(((config or {}).get("configurable") or {}).get("background_summaries"))
    res: Any = MISSING
    if len(turns) >= 2 * n:
        fold = turns[:n]
        res = ready(eng, l1_key(tid, fold), bg, len(turns) >= 3 * n,
                    lambda: schedule_l1(eng, tid, fold, list(l1), l2))
    if res is not PENDING and len(turns) >= 2 * n:  # PENDING: computed in the background, folded next turn
        fold, fold_pairs = turns[:n], pairs[:n]
        text, facts, ok = res if res is not MISSING else summarize_l1(eng, [(t.turn, t.user, t.assistant) for t in fold])
        counters["llm_calls_summary"] = 1
        if not ok:
            counters["summary_failures"] = 1
        l1.append({"from_turn": fold[0].turn, "to_turn": fold[-1].turn, "text": text, "llm": ok})
        pending += [{"text": f, "turn": fold[-1].turn} for f in facts]
        update["messages"] = [RemoveMessage(id=str(m.id)) for pair in fold_pairs for m in pair]
        keep = {t.turn for t in turns[n:]}
        # the compaction re-renders everything after L1 anyway: drop the kept turns' memory blocks now
        update["l0_shown"] = [dict(m, memories=[]) for m in (state.get("l0_shown") or [])
                             if int(m.get("turn", 0)) in keep]
    requested = bool(state.get("l2_requested"))
    due = l1_coverage(l1) >= s.l2_threshold + n or (requested and l1)
    new_l2: Any = PENDING
    if due:
        take = l2_take(l1, s.l2_threshold, everything=requested)
        prev, lines, late = l2, list(l1), l1_coverage(l1) >= s.l2_threshold + 3 * n
        new_l2 = MISSING if requested else ready(eng, l2_key(tid, l2, take), bg, late,
                                                 lambda: schedule_l2(eng, tid, prev, lines))
    if due and new_l2 is not PENDING:
        new_l2 = summarize_l2(eng, l2, take) if new_l2 is MISSING else new_l2
        counters["llm_calls_summary"] = counters.get("llm_calls_summary", 0) + 1
        if new_l2 is not None:
            l2 = new_l2
            l1 = l1[len(take):]
            update["l2"] = l2
        else:
            counters["summary_failures"] = counters.get("summary_failures", 0) + 1
    update["l1"] = l1
    update["llm_facts_to_store"] = pending
    # refreeze the head only at compaction, and only when what it shows changed
    persona = persona_of(state, s.persona)
    snap = head_snapshot(persona, state.get("slots") or {}, l2)
    if snap != state.get("frozen_head"):
        update["frozen_head"] = snap
    update["counters"] = counters
    return update


def fold_all(eng: Engine, state: Mapping[str, Any], default_persona: str) -> dict[str, Any] | None:
    """``summarize now``: every L1 line and the verbatim turns beyond the newest N folded into L2 at once
    (the state update; ``None`` when there is nothing to fold). Raises when the LLM gives no L2."""
    lines = list(state.get("l1") or [])
    turns = l0_turns(state)
    n = eng.settings.l0_turns
    older = turns[:-n] if len(turns) > n else []
    if older:
        lines.append({"from_turn": older[0].turn, "to_turn": older[-1].turn,
                      "text": " / ".join(f"user: {t.user} — assistant: {t.assistant}" for t in older)[:2000]})
    if not lines:
        lines = [{"from_turn": t.turn, "to_turn": t.turn, "text": f"user: {t.user} — assistant: {t.assistant}"}
                 for t in turns]
    if not lines:
        return None
    new_l2 = summarize_l2(eng, state.get("l2"), lines)
    if new_l2 is None:
        raise RuntimeError("the LLM could not produce the L2 summary; try again")
    update: dict[str, Any] = {"l2": new_l2, "l1": [], "counters": {"llm_calls_summary": 1},
                              "frozen_head": head_snapshot(persona_of(state, default_persona), state.get("slots") or {}, new_l2)}
    if older:
        pairs = completed_pairs(state)[: len(older)]
        update["messages"] = [RemoveMessage(id=str(m.id)) for p in pairs for m in p]
        keep = {t.turn for t in turns[len(older):]}
        update["l0_shown"] = [m for m in state.get("l0_shown") or [] if int(m.get("turn", 0)) in keep]
    return update


# ---- background: the next compaction's summaries, computed after the reply (memchat.backends.precompute) ----


def schedule_next(engine: Engine, thread_id: str, state: Mapping[str, Any]) -> bool:
    """After a turn: start the summaries the next turn's compaction will need; True when one started."""
    s = engine.settings
    n = s.l0_turns
    turns = l0_turns(state)
    l1 = list(state.get("l1") or [])
    if len(turns) >= 2 * n:
        schedule_l1(engine, thread_id, turns[:n], l1, state.get("l2"))
        return True
    if l1_due(l1, s):
        schedule_l2(engine, thread_id, state.get("l2"), l1)
        return True
    return False


def l1_due(l1: list[dict[str, Any]], settings: Any) -> bool:
    """Whether L1 covers enough turns to be folded into L2."""
    return bool(l1_coverage(l1) >= settings.l2_threshold + settings.l0_turns)


def schedule_l1(engine: Engine, thread_id: str, fold: list[Turn], l1: list[dict[str, Any]],
                l2: Mapping[str, Any] | None) -> None:
    """Summarize ``fold`` into an L1 line in the background (then L2, when that line makes it due)."""
    def job() -> Any:
        res = summarize_l1(engine, [(t.turn, t.user, t.assistant) for t in fold])
        lines = l1 + [{"from_turn": fold[0].turn, "to_turn": fold[-1].turn, "text": res[0], "llm": res[2]}]
        if l1_due(lines, engine.settings):  # registered before this result shows: the node sees it pending
            schedule_l2(engine, thread_id, l2, lines)
        return res

    cache_for(engine).submit(l1_key(thread_id, fold), job)


def schedule_l2(engine: Engine, thread_id: str, l2: Mapping[str, Any] | None, l1: list[dict[str, Any]]) -> None:
    """Fold the oldest L1 lines into L2 in the background."""
    take = l2_take(l1, engine.settings.l2_threshold)
    prev = dict(l2) if l2 else None
    cache_for(engine).submit(l2_key(thread_id, l2, take), lambda: summarize_l2(engine, prev, take))
