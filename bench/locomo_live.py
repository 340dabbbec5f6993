"""LoCoMo through the real turn path: what the model actually sees.

``memchat bench locomo --live --data PATH [--conversations N] [--offset K] [--json]``

Each conversation is replayed through ``MemChat`` turns (the graph, SQLite checkpointer and vector
memory of ``memchat serve``) on one thread, one utterance per turn (``[date] Speaker: text``), then
every category 1–4 question is asked on the same thread. The LLM is a stub that keeps every earlier
request + reply and reports the longest common token prefix with any of them (a radix cache without
eviction, Qwen tokens). Per category: all-evidence recall in the answer prompt (by memory id and by
evidence text), prompt tokens, uncached tokens per turn, LLM calls per turn, ms per turn without the
LLM; next to the engine-only recall (``Engine.recall`` at 2,000 memory tokens on the same store) and
two baselines: the full history and a recent window of the same mean prompt size.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from memchat.backends.engine import CountCache, Engine
from memchat.backends.tokens import load_tokenizer
from memchat.backends.vectorstore import msg_id
from memchat.bench.common import (
    bench_settings,
    emit,
    mean,
    out_dir,
    parse_overrides,
    pct,
    plt,
    progress,
    temp_data_dir,
)
from memchat.bench.locomo import CATEGORIES, DEFAULT_DATA, evidence_ids
from memchat.bench.radix import RadixStubChatModel
from memchat.nodes.common import l0_turns

ENGINE_BUDGET = 2000
TARGETS = {"recall": 0.85, "prompt": 4000, "uncached": 1200, "hot_calls": 1.25}


def norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def load_raw(path: Path, n: int | None, offset: int = 0) -> list[dict[str, Any]]:
    """Conversations as (messages with their dia_id, questions), as the black-box probe replays them."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))[offset:]
    out: list[dict[str, Any]] = []
    for s in data[: n or None]:
        c = s["conversation"]
        sessions = sorted(int(m.group(1)) for k in c if (m := re.fullmatch(r"session_(\d+)", k)))
        msgs = []
        for i in sessions:
            date = c.get(f"session_{i}_date_time", "")
            for t in c[f"session_{i}"] or []:
                cap = f" [shares a photo: {t['blip_caption']}]" if t.get("blip_caption") else ""
                msgs.append((str(t["dia_id"]), f"[{date}] {t['speaker']}: {t['text']}{cap}", norm(t["text"])))
        qs = [q for q in s.get("qa") or [] if q.get("category") in CATEGORIES and q.get("evidence")]
        out.append({"id": str(s.get("sample_id") or f"conv-{len(out)}"), "messages": msgs, "questions": qs})
    return out


def shown_ids(st: dict[str, Any], tid: str) -> set[str]:
    """Memory ids in the last prompt: memory blocks of the L0 turns and the L0 turns themselves."""
    ids = {str(m.get("id")) for meta in st.get("l0_shown") or [] for m in meta.get("memories") or []}
    return ids | {msg_id(tid, 2 * t.turn - 1) for t in l0_turns(st)}


def _conversation(conv: dict[str, Any], settings_overrides: dict[str, Any], quiet: bool) -> dict[str, Any]:
    from memchat.chat import MemChat

    rows: list[dict[str, Any]] = []
    with temp_data_dir("locomo-live") as tmp:
        settings = bench_settings(tmp, **settings_overrides)
        tok = CountCache(load_tokenizer(settings.tokenizer))
        llm = RadixStubChatModel(tokenizer=tok)
        eng = Engine(settings, llm=llm, tokenizer=tok)
        mc = MemChat(engine=eng)
        tid = uid = conv["id"]
        seq_of: dict[str, str] = {}
        texts: dict[str, str] = {}

        def turn(message: str) -> dict[str, Any]:
            before = len(llm.calls)
            t0 = time.perf_counter()
            res = mc.turn(tid, message, user_id=uid)
            wall = time.perf_counter() - t0
            calls = llm.calls[before:]
            resp = [c for c in calls if c.kind == "respond"]
            return {"turn": res.turn, "calls": calls, "ms": 1000 * (wall - sum(c.seconds for c in calls)),
                    "prompt": resp[-1] if resp else None}

        for dia, message, text in progress(conv["messages"], desc=f"replay {tid}", quiet=quiet):
            r = turn(message)
            seq_of[dia] = msg_id(tid, 2 * r["turn"] - 1)
            texts[dia] = text
            rows.append(dict(r, question=None))
        engine_hits = []
        for q in conv["questions"]:  # engine-only on the same store, before the questions are stored
            ev = {seq_of[d] for d in evidence_ids(q) if d in seq_of}
            items = eng.recall(str(q["question"]), user_id=uid, thread_id=tid, budget_tokens=ENGINE_BUDGET)
            engine_hits.append(bool(ev) and ev <= {str(i["id"]) for i in items})
        for q in progress(conv["questions"], desc=f"ask {tid}", quiet=quiet):
            r = turn(str(q["question"]))
            found = [d for d in evidence_ids(q) if d in seq_of]
            prompt = norm("\n".join(m["content"] for m in r["prompt"].messages)) if r["prompt"] else ""
            ids = shown_ids(mc.state(tid), tid)
            r.update(question=q, by_text=bool(found) and all(texts[d][:80] in prompt for d in found),
                     by_id=bool(found) and all(seq_of[d] in ids for d in found))
            rows.append(r)
        baselines = _baselines(eng, conv, rows)
    return {"rows": rows, "engine": engine_hits, "baselines": baselines}


def _baselines(eng: Engine, conv: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Full history (every message, append-only) and a recent window of memchat's mean prompt size."""
    count = eng.tokenizer.count
    lines = [(dia, count(msg) + 12) for dia, msg, _ in conv["messages"]]
    total = sum(t for _, t in lines)
    q_rows = [r for r in rows if r["question"]]
    window = int(mean([float(r["prompt"].prompt_tokens) for r in q_rows if r["prompt"]]))
    recent: set[str] = set()
    used = 0
    for dia, t in reversed(lines):
        if used + t > window:
            break
        recent.add(dia)
        used += t
    hits = [evidence_ids(r["question"]) <= recent for r in q_rows]
    return {"full_prompt_tokens": total, "recent_window_tokens": window, "recent_hits": hits,
            "recent_cats": [int(r["question"]["category"]) for r in q_rows]}


def run(data: Path, conversations: int | None = None, offset: int = 0, quiet: bool = False, plot: bool = True,
        settings_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay, ask, and return the JSON payload."""
    convs = load_raw(data, conversations, offset)
    results = [_conversation(c, settings_overrides or {}, quiet) for c in convs]
    rows = [r for res in results for r in res["rows"]]
    q_rows = [r for r in rows if r["question"]]
    calls = [c for r in rows for c in r["calls"]]
    resp = [r["prompt"] for r in rows if r["prompt"]]

    def share(xs: list[bool]) -> float:
        return round(mean([float(x) for x in xs]), 4)

    def cat_rows(c: int | None) -> list[dict[str, Any]]:
        return [r for r in q_rows if c in (None, int(r["question"]["category"]))]

    per_cat = {}
    for c in (None, *CATEGORIES):
        rs = cat_rows(c)
        toks = [float(r["prompt"].prompt_tokens) for r in rs if r["prompt"]]
        per_cat["all" if c is None else str(c)] = {
            "n": len(rs), "recall_text": share([r["by_text"] for r in rs]), "recall_id": share([r["by_id"] for r in rs]),
            "prompt_mean": round(mean(toks)), "prompt_p95": round(pct(toks, 95))}
    engine = [h for res in results for h in res["engine"]]
    recent = [h for res in results for h in res["baselines"]["recent_hits"]]
    recent_cats = [c for res in results for c in res["baselines"]["recent_cats"]]
    unc = [float(c.uncached) for c in resp]
    unc_q = [float(r["prompt"].uncached) for r in q_rows if r["prompt"]]
    n_turns = max(1, len(rows))
    kinds = {k: sum(1 for c in calls if c.kind == k) for k in ("respond", "summary", "extraction")}
    payload: dict[str, Any] = {
        "conversations": [c["id"] for c in convs], "turns": len(rows), "questions": len(q_rows),
        "recall": per_cat["all"]["recall_text"], "recall_by_id": per_cat["all"]["recall_id"],
        "per_category": per_cat,
        "prompt_tokens_mean": per_cat["all"]["prompt_mean"], "prompt_tokens_p95": per_cat["all"]["prompt_p95"],
        "prompt_tokens_mean_all_turns": round(mean([float(c.prompt_tokens) for c in resp])),
        "uncached_per_turn_mean": round(mean(unc)), "uncached_per_turn_p95": round(pct(unc, 95)),
        "uncached_question_turns_mean": round(mean(unc_q)),
        "uncached_summary_calls_per_turn": round(sum(c.uncached for c in calls if c.kind == "summary") / n_turns),
        "llm_calls_per_turn_hot": round((kinds["respond"] + kinds["summary"]) / n_turns, 3),
        "llm_calls_per_turn_off_path": round(kinds["extraction"] / n_turns, 3),
        "ms_per_turn_excl_llm": round(mean([r["ms"] for r in rows]), 1),
        "ms_per_turn_excl_llm_p95": round(pct([r["ms"] for r in rows], 95), 1),
        "engine_only": {"budget": ENGINE_BUDGET, "recall": share(engine)},
        "baselines": {
            "full_history": {"recall": 1.0, "prompt_tokens_mean": round(mean(
                [float(res["baselines"]["full_prompt_tokens"]) for res in results]))},
            "recent_window": {"recall": share(recent), "prompt_tokens": round(mean(
                [float(res["baselines"]["recent_window_tokens"]) for res in results])),
                "per_category": {str(c): share([h for h, k in zip(recent, recent_cats) if k == c]) for c in CATEGORIES}},
        },
        "settings_overrides": settings_overrides or {},
    }
    ok = (payload["recall"] >= TARGETS["recall"] and payload["prompt_tokens_mean"] <= TARGETS["prompt"]
          and payload["uncached_per_turn_mean"] <= TARGETS["uncached"]
          and payload["llm_calls_per_turn_hot"] <= TARGETS["hot_calls"])
    payload["targets_met"] = ok
    if plot and q_rows:
        payload["plot"] = str(_plot(payload))
    return payload


def _plot(p: dict[str, Any]) -> Path:
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4))
    labels = ["all"] + [f"cat {c}" for c in CATEGORIES]
    keys = ["all"] + [str(c) for c in CATEGORIES]
    series = {"live (evidence text in prompt)": [p["per_category"][k]["recall_text"] for k in keys],
              "recent window": [p["baselines"]["recent_window"]["recall"]]
              + [p["baselines"]["recent_window"]["per_category"][k] for k in keys[1:]]}
    width = 0.38
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([x + (i - 0.5) * width for x in range(len(labels))], vals, width, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1)
    ax.axhline(TARGETS["recall"], color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylabel("all-evidence recall in the answer prompt")
    ax.set_title(f"LoCoMo live: {p['prompt_tokens_mean']} prompt tokens, {p['uncached_per_turn_mean']} uncached/turn")
    ax.legend()
    fig.tight_layout()
    path = out_dir() / "locomo_live.png"
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
    return path


def table(p: dict[str, Any]) -> Table:
    t = Table(title=f"LoCoMo live (MemChat turns, radix-cache stub): {p['questions']} questions, "
                    f"{p['turns']} turns, {', '.join(p['conversations'])}")
    t.add_column("category")
    for col in ("n", "recall (text)", "recall (id)", "prompt mean", "prompt p95"):
        t.add_column(col, justify="right")
    for k, v in p["per_category"].items():
        t.add_row(k, str(v["n"]), f"{v['recall_text']:.3f}", f"{v['recall_id']:.3f}", str(v["prompt_mean"]),
                  str(v["prompt_p95"]))
    return t


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="memchat bench locomo --live", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON (locomo10.json format)")
    ap.add_argument("--conversations", type=int, default=None, help="how many conversations (default all)")
    ap.add_argument("--offset", type=int, default=0, help="skip the first K conversations (held-out runs)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a Settings field; repeatable")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    a = ap.parse_args(argv)
    if not a.data.is_file():
        ap.error(f"LoCoMo data not found: {a.data} (pass --data PATH)")
    p = run(a.data, a.conversations, a.offset, quiet=a.quiet, plot=not a.no_plot,
            settings_overrides=parse_overrides(a.set))
    b = p["baselines"]
    notes = [
        f"uncached tokens per turn: mean {p['uncached_per_turn_mean']}, p95 {p['uncached_per_turn_p95']} "
        f"(question turns {p['uncached_question_turns_mean']}; summary calls add {p['uncached_summary_calls_per_turn']}/turn)",
        f"prompt tokens over all turns: mean {p['prompt_tokens_mean_all_turns']}",
        f"LLM calls per turn: hot path {p['llm_calls_per_turn_hot']}, off path {p['llm_calls_per_turn_off_path']}; "
        f"{p['ms_per_turn_excl_llm']} ms/turn without the LLM (p95 {p['ms_per_turn_excl_llm_p95']})",
        f"engine only (Engine.recall at {p['engine_only']['budget']} memory tokens): {p['engine_only']['recall']:.3f}",
        f"baselines: full history recall 1.0 at {b['full_history']['prompt_tokens_mean']} tokens; recent window of "
        f"{b['recent_window']['prompt_tokens']} tokens recall {b['recent_window']['recall']:.3f}",
        f"targets (recall >= {TARGETS['recall']}, prompt <= {TARGETS['prompt']}, uncached <= {TARGETS['uncached']}, "
        f"hot calls <= {TARGETS['hot_calls']}): {'met' if p['targets_met'] else 'NOT met'}",
    ]
    if p.get("plot"):
        notes.append(f"plot: {p['plot']}")
    emit([table(p)], p, a.json, notes)
    return 0
