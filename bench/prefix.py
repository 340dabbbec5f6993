"""Prefix reuse, prompt tokens and LLM calls per turn: memchat's layout vs a naive one.

``memchat bench prefix [--turns 200] [--json]``

A deterministic synthetic conversation (facts, corrections, recall questions, filler) runs through
the full graph (``MemChat`` over an offline stub chat model). Per turn it records the prefix reuse
of the response prompt (share of its Qwen tokens equal to a prefix of the previous prompt plus its
reply; the graph's own figure is re-computed independently here), the prompt tokens and the LLM
calls by kind. The naive layout — memory block on top of the system prompt, sliding window of the
last N turns — is rendered on the same conversation, with the same memories and replies.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from memchat.backends.engine import Engine
from memchat.bench.common import (
    StubChatModel,
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
from memchat.bench.synth import conversation
from memchat.memory.prompt import Budget, Message, memory_line, prefix_reuse
from memchat.memory.slots import render_slots
from memchat.prompts import load_prompt

TARGET_REUSE = 0.85
TARGET_SUMMARY_PER_TURN = 0.25


def render_chatml(ms: list[Message]) -> str:
    """The prompt as a ChatML template renders it (Qwen)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in ms)


def verify_reuse(budget: Budget, prev: list[Message] | None, prev_reply: str | None, cur: list[Message]) -> float:
    """Independent re-computation: tokenize whole rendered strings (not per message) and compare."""
    if not prev:
        return 0.0
    cur_ids = budget.tok.encode(render_chatml(cur))
    prev_ids = budget.tok.encode(render_chatml(prev) + "<|im_start|>assistant\n" + (prev_reply or ""))
    n = 0
    for a, b in zip(prev_ids, cur_ids):
        if a != b:
            break
        n += 1
    return n / len(cur_ids) if cur_ids else 0.0


def uncached(prompt_tokens: int, reuse: float) -> int:
    """Tokens of a prompt a prefix cache does not hold: the ratio alone rewards a prompt that shows too little."""
    return round(prompt_tokens * (1.0 - reuse))


def naive_prompt(persona: str, slots: dict[str, Any], memories: list[dict[str, Any]],
                 window: list[tuple[str, str]], message: str) -> list[Message]:
    """Memory block on top (inside the system prompt), then the last N turns verbatim, then the message."""
    system = persona.strip() + "\n\n## What you know about the user\n" + render_slots(slots)
    if memories:
        body = "\n".join(memory_line(m) for m in memories)
        system = load_prompt("memory_block").strip().format(memories=body) + "\n\n" + system
    ms: list[Message] = [{"role": "system", "content": system}]
    for u, a in window:
        ms.append({"role": "user", "content": u})
        ms.append({"role": "assistant", "content": a})
    ms.append({"role": "user", "content": message})
    return ms


def run(turns: int = 200, window: int = 10, seed: int = 7, quiet: bool = False, plot: bool = True,
        settings_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the conversation; returns the JSON payload (with per-turn series)."""
    from memchat.chat import MemChat

    msgs = conversation(turns, seed)
    rows: list[dict[str, Any]] = []
    with temp_data_dir("prefix") as tmp:
        settings = bench_settings(tmp, **(settings_overrides or {}))
        llm = StubChatModel()
        eng = Engine(settings, llm=llm)
        mc = MemChat(engine=eng)
        budget = eng.budget
        tid = "bench-prefix"
        prev: list[Message] | None = None
        prev_reply: str | None = None
        naive_prev: list[Message] | None = None
        history: list[tuple[str, str]] = []
        prev_metas: list[Any] = []
        for i, msg in enumerate(progress(msgs, desc="turns", quiet=quiet), start=1):
            before = dict(llm.calls)
            t0 = time.perf_counter()
            res = mc.turn(tid, msg, user_id="bench-user")
            wall = time.perf_counter() - t0
            ctx = res.context
            st = mc.state(tid)
            cur: list[Message] = list(ctx["messages"])
            verified = verify_reuse(budget, prev, prev_reply, cur)
            metas = st.get("l0_shown") or []
            shown = list((metas[-1] if metas else {}).get("memories") or [])
            had = {int(m.get("turn", 0)): bool(m.get("memories")) for m in prev_metas}
            rebase = any(had.get(int(m.get("turn", 0))) and not m.get("memories") for m in metas[:-1])
            prev_metas = metas
            naive = naive_prompt(settings.persona, st.get("slots") or {}, shown, history[-window:], msg)
            rows.append({
                "turn": i,
                "prefix_reuse": float(ctx.get("prefix_reuse") or 0.0),
                "prefix_reuse_verified": round(verified, 4),
                "prompt_tokens": int(ctx["sections"]["total"]),
                "memory_tokens": int(ctx["sections"].get("memory", 0)),
                "respond_calls": llm.calls.get("respond", 0) - before.get("respond", 0),
                "summary_calls": llm.calls.get("summary", 0) - before.get("summary", 0),
                "rebased": bool(ctx.get("rebased")) or rebase,
                "naive_reuse": round(prefix_reuse(budget, naive_prev, prev_reply, naive), 4),
                "naive_prompt_tokens": budget.messages(naive),
                "uncached_tokens": uncached(int(ctx["sections"]["total"]), verified),
                "turn_s": round(wall, 4),
            })
            rows[-1]["naive_uncached_tokens"] = uncached(rows[-1]["naive_prompt_tokens"], rows[-1]["naive_reuse"])
            prev, prev_reply, naive_prev = cur, res.reply, naive
            history.append((msg, res.reply))
        limit = settings.prompt_limit
        counters = dict(mc.state(tid).get("counters") or {})
    return summarize_rows(rows, limit, window, counters, plot)


def summarize_rows(rows: list[dict[str, Any]], limit: int, window: int, counters: dict[str, Any],
                   plot: bool) -> dict[str, Any]:
    n = len(rows)
    later = [r for r in rows if r["turn"] > 1]  # turn 1 has no previous prompt
    steady = [r for r in rows if r["turn"] >= 20] or rows
    toks = [float(r["prompt_tokens"]) for r in steady]
    ntoks = [float(r["naive_prompt_tokens"]) for r in steady]
    diff = max((abs(r["prefix_reuse"] - r["prefix_reuse_verified"]) for r in rows), default=0.0)
    respond_calls = sum(r["respond_calls"] for r in rows)
    summary_calls = sum(r["summary_calls"] for r in rows)
    payload: dict[str, Any] = {
        "turns": n,
        "prefix_reuse_mean": round(mean([r["prefix_reuse"] for r in later]), 4),
        "prefix_reuse_p10": round(pct([r["prefix_reuse"] for r in later], 10), 4),
        "prefix_reuse_verified_mean": round(mean([r["prefix_reuse_verified"] for r in later]), 4),
        "prefix_reuse_max_abs_diff": round(diff, 4),
        "naive_reuse_mean": round(mean([r["naive_reuse"] for r in later]), 4),
        "uncached_tokens_per_turn": {"mean": round(mean([float(r["uncached_tokens"]) for r in later]), 1),
                                     "p95": round(pct([float(r["uncached_tokens"]) for r in later], 95), 1)},
        "naive_uncached_tokens_per_turn": round(mean([float(r["naive_uncached_tokens"]) for r in later]), 1),
        "respond_calls_per_turn": round(respond_calls / max(1, n), 4),
        "max_respond_calls_in_a_turn": max((r["respond_calls"] for r in rows), default=0),
        "summary_calls_per_turn": round(summary_calls / max(1, n), 4),
        "prompt_tokens": {"mean": round(mean(toks), 1), "min": min(toks, default=0), "max": max(toks, default=0),
                          "p95": round(pct(toks, 95), 1), "limit": limit, "from_turn": 20 if n >= 20 else 1},
        "prompt_tokens_drift": {  # flat = the last stretch is no bigger than the first one after warm-up
            "first_100_mean": round(mean(toks[:100]), 1), "last_100_mean": round(mean(toks[-100:]), 1)},
        "naive_prompt_tokens": {"mean": round(mean(ntoks), 1), "min": min(ntoks, default=0),
                                "max": max(ntoks, default=0), "window_turns": window},
        "rebased_turns": sum(1 for r in rows if r["rebased"]),
        "compaction_turns": sum(1 for r in rows if r["summary_calls"]),
        "prefix_reuse_mean_compaction_turns": round(mean([r["prefix_reuse"] for r in later if r["summary_calls"]]), 4),
        "prefix_reuse_mean_rebase_turns": round(mean([r["prefix_reuse"] for r in later if r["rebased"]
                                                      and not r["summary_calls"]]), 4),
        "prefix_reuse_mean_other_turns": round(mean([r["prefix_reuse"] for r in later if not r["rebased"]
                                                     and not r["summary_calls"]]), 4),
        "turn_ms_mean": round(1000 * mean([r["turn_s"] for r in rows]), 1),
        "graph_counters": counters,
        "per_turn": rows,
    }
    payload["targets"] = {
        "prefix_reuse_mean>=0.85": payload["prefix_reuse_mean"] >= TARGET_REUSE,
        "one_respond_call_per_turn": payload["max_respond_calls_in_a_turn"] == 1 and respond_calls == n,
        "summary_calls_per_turn<=0.25": payload["summary_calls_per_turn"] <= TARGET_SUMMARY_PER_TURN,
        "prompt_tokens_within_limit": payload["prompt_tokens"]["max"] <= limit,
    }
    if plot and rows:
        payload["plot"] = str(_plot(rows, n))
    return payload


def _plot(rows: list[dict[str, Any]], n: int) -> Any:
    pyplot = plt()
    xs = [r["turn"] for r in rows]
    fig, (a1, a2) = pyplot.subplots(2, 1, figsize=(9, 6), sharex=True)
    a1.plot(xs, [r["prefix_reuse"] for r in rows], label="memchat", linewidth=1)
    a1.plot(xs, [r["naive_reuse"] for r in rows], label="naive (memory on top, sliding window)", linewidth=1)
    a1.axhline(TARGET_REUSE, color="grey", linestyle="--", linewidth=0.8)
    a1.set_ylabel("prefix reuse")
    a1.set_ylim(0, 1.02)
    a1.legend(loc="lower right")
    a2.plot(xs, [r["prompt_tokens"] for r in rows], label="memchat", linewidth=1)
    a2.plot(xs, [r["naive_prompt_tokens"] for r in rows], label="naive", linewidth=1)
    a2.set_ylabel("prompt tokens (Qwen)")
    a2.set_xlabel("turn")
    a2.legend(loc="lower right")
    fig.suptitle(f"Prefix reuse and prompt tokens per turn ({n} turns)")
    fig.tight_layout()
    path = out_dir() / f"prefix_{n}.png"
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
    return path


def table(p: dict[str, Any]) -> Table:
    t = Table(title=f"Prefix reuse over {p['turns']} synthetic turns (full graph, stub LLM)")
    t.add_column("metric")
    t.add_column("memchat", justify="right")
    t.add_column("naive", justify="right")
    t.add_column("target", justify="right")
    pt, nt = p["prompt_tokens"], p["naive_prompt_tokens"]
    ok = p["targets"]
    t.add_row("prefix reuse, mean (turn ≥ 2)", f"{p['prefix_reuse_mean']:.3f}", f"{p['naive_reuse_mean']:.3f}",
              f"≥ {TARGET_REUSE} {'✓' if ok['prefix_reuse_mean>=0.85'] else '✗'}")
    u = p["uncached_tokens_per_turn"]
    t.add_row("uncached prompt tokens / turn, mean (p95)", f"{u['mean']:.0f} ({u['p95']:.0f})",
              f"{p['naive_uncached_tokens_per_turn']:.0f}", "")
    t.add_row("prefix reuse, p10", f"{p['prefix_reuse_p10']:.3f}", "", "")
    t.add_row("prefix reuse, independently re-computed", f"{p['prefix_reuse_verified_mean']:.3f}", "",
              f"max |diff| {p['prefix_reuse_max_abs_diff']:.4f}")
    t.add_row("respond calls / turn", f"{p['respond_calls_per_turn']:.2f}", "1.00",
              f"= 1 {'✓' if ok['one_respond_call_per_turn'] else '✗'}")
    t.add_row("summary calls / turn (amortized)", f"{p['summary_calls_per_turn']:.3f}", "0",
              f"≤ {TARGET_SUMMARY_PER_TURN} {'✓' if ok['summary_calls_per_turn<=0.25'] else '✗'}")
    t.add_row(f"prompt tokens from turn {pt['from_turn']}: mean", f"{pt['mean']:.0f}", f"{nt['mean']:.0f}", "")
    d = p["prompt_tokens_drift"]
    t.add_row("prompt tokens: first vs last 100 turns (mean)", f"{d['first_100_mean']:.0f} vs {d['last_100_mean']:.0f}",
              "", "")
    t.add_row("prompt tokens: min – max", f"{pt['min']:.0f} – {pt['max']:.0f}", f"{nt['min']:.0f} – {nt['max']:.0f}",
              f"≤ {pt['limit']} {'✓' if ok['prompt_tokens_within_limit'] else '✗'}")
    t.add_row("prefix reuse on compaction turns (n)", f"{p['prefix_reuse_mean_compaction_turns']:.3f} "
              f"({p['compaction_turns']})", "", "")
    t.add_row("prefix reuse on memory-rebase turns (n)", f"{p['prefix_reuse_mean_rebase_turns']:.3f} "
              f"({p['rebased_turns']})", "", "")
    t.add_row("prefix reuse on the other turns", f"{p['prefix_reuse_mean_other_turns']:.3f}", "", "")
    t.add_row("graph time per turn (ms, stub LLM)", f"{p['turn_ms_mean']:.0f}", "", "")
    return t


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="memchat bench prefix", description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--window", type=int, default=10, help="turns in the naive layout's sliding window")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--per-turn", action="store_true", help="keep the per-turn series in the JSON")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a Settings field for this run (e.g. memory_top_k=30); repeatable")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    a = ap.parse_args(argv)
    p = run(a.turns, a.window, a.seed, quiet=a.quiet, plot=not a.no_plot, settings_overrides=parse_overrides(a.set))
    out = dict(p) if a.per_turn else {k: v for k, v in p.items() if k != "per_turn"}
    notes = [f"plot: {p['plot']}"] if p.get("plot") else []
    emit([table(p)], out, a.json, notes)
    return 0
