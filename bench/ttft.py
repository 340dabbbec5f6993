"""Time to first token on the embedded llama.cpp server: memchat's layout vs a naive one.

``memchat bench ttft [--turns 50] [--json]``

The embedded server (the shipped Gemma 3 270M, started by ``ensure_local_server``) answers a
synthetic conversation through the full graph; llama.cpp keeps the KV cache of the previous prompt
and re-uses the longest matching prefix. The time to first token of each memchat turn is measured
live. Then the naive layout (memory block on top of the system prompt, sliding window of the last N
turns) of the same conversation — same messages, memories and replies — is sent turn by turn to the
same server, so it gets the same chance to re-use its previous prompt.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from memchat.bench.common import bench_settings, emit, mean, out_dir, plt, progress, temp_data_dir
from memchat.bench.prefix import naive_prompt
from memchat.bench.synth import conversation
from memchat.memory.prompt import Message

TARGET_SPEEDUP = 3.0


def first_token_s(llm: Any, messages: list[Message]) -> float:
    """Seconds until the first streamed token of ``messages``."""
    from memchat.nodes.respond import to_lc

    t0 = time.perf_counter()
    first: float | None = None
    for chunk in llm.stream(to_lc(messages)):
        if first is None and chunk.content:
            first = time.perf_counter() - t0
    return first if first is not None else time.perf_counter() - t0


def run(turns: int = 50, window: int = 10, max_tokens: int | None = None, seed: int = 7, quiet: bool = False,
        plot: bool = True) -> dict[str, Any]:
    """Run both layouts on the embedded server; returns the JSON payload."""
    from memchat.backends.engine import Engine
    from memchat.backends.local_server import _servers, ensure_local_server
    from memchat.chat import MemChat
    from memchat.memory.prompt import Budget, prefix_reuse

    msgs = conversation(turns, seed)
    rows: list[dict[str, Any]] = []
    with temp_data_dir("ttft") as tmp:
        extra: dict[str, Any] = {"llm_max_tokens": max_tokens} if max_tokens else {}
        settings = bench_settings(tmp, llm_base_url="", llm_model="", llm_temperature=0.0,
                                  local_startup_timeout=300.0, **extra)
        try:
            t0 = time.perf_counter()
            ensure_local_server(settings)
            startup = time.perf_counter() - t0
            eng = Engine(settings)
            mc = MemChat(engine=eng)
            budget: Budget = eng.budget
            tid = "bench-ttft"
            history: list[tuple[str, str]] = []
            naive_prompts: list[list[Message]] = []
            for i, msg in enumerate(progress(msgs, desc="memchat turns", quiet=quiet), start=1):
                res = mc.turn(tid, msg, user_id="bench-user")
                ctx = res.context
                st = mc.state(tid)
                metas = st.get("l0_shown") or []
                shown = list((metas[-1] if metas else {}).get("memories") or [])
                naive = naive_prompt(settings.persona, st.get("slots") or {}, shown, history[-window:], msg)
                naive_prompts.append(naive)
                rows.append({"turn": i, "memchat_ttft_s": float(ctx.get("ttft_s") or ctx.get("latency_s") or 0.0),
                             "memchat_prompt_tokens": int(ctx["sections"]["total"]),
                             "prefix_reuse": float(ctx.get("prefix_reuse") or 0.0),
                             "memchat_uncached_tokens": round(int(ctx["sections"]["total"])
                                                              * (1.0 - float(ctx.get("prefix_reuse") or 0.0))),
                             "naive_prompt_tokens": budget.messages(naive)})
                prev_naive = naive_prompts[-2] if len(naive_prompts) > 1 else None
                reuse = prefix_reuse(budget, prev_naive, history[-1][1] if history else None, naive)
                rows[-1]["naive_uncached_tokens"] = round(rows[-1]["naive_prompt_tokens"] * (1.0 - reuse))
                history.append((msg, res.reply))
            naive_llm = eng.llm.bind(max_completion_tokens=2)
            for row, naive in zip(rows, progress(naive_prompts, desc="naive turns", quiet=quiet)):
                row["naive_ttft_s"] = first_token_s(naive_llm, naive)
        finally:
            for key, server in list(_servers.items()):
                if str(tmp) in key:
                    server.stop()
    return summarize(rows, startup, plot)


def summarize(rows: list[dict[str, Any]], startup: float, plot: bool) -> dict[str, Any]:
    last = rows[-1]
    tail = rows[-10:]
    m_tail = mean([r["memchat_ttft_s"] for r in tail])
    n_tail = mean([r["naive_ttft_s"] for r in tail])
    payload: dict[str, Any] = {
        "turns": len(rows),
        "memchat_ttft_s_last": round(last["memchat_ttft_s"], 4),
        "naive_ttft_s_last": round(last["naive_ttft_s"], 4),
        "speedup_last": round(last["naive_ttft_s"] / max(last["memchat_ttft_s"], 1e-6), 2),
        "memchat_ttft_s_last10_mean": round(m_tail, 4),
        "naive_ttft_s_last10_mean": round(n_tail, 4),
        "speedup_last10": round(n_tail / max(m_tail, 1e-6), 2),
        "memchat_prompt_tokens_last": last["memchat_prompt_tokens"],
        "naive_prompt_tokens_last": last["naive_prompt_tokens"],
        "server_startup_s": round(startup, 1),
        "memchat_reuse_last": last["prefix_reuse"],
        "memchat_ttft_s_high_reuse_mean": round(mean([r["memchat_ttft_s"] for r in rows[1:] if r["prefix_reuse"] >= 0.8]), 4),
        "naive_ttft_s_same_turns_mean": round(mean([r["naive_ttft_s"] for r in rows[1:] if r["prefix_reuse"] >= 0.8]), 4),
        "memchat_ttft_s_low_reuse_mean": round(mean([r["memchat_ttft_s"] for r in rows[1:] if r["prefix_reuse"] < 0.8]), 4),
        "low_reuse_turns": sum(1 for r in rows[1:] if r["prefix_reuse"] < 0.8),
        "memchat_uncached_tokens_per_turn": round(mean([float(r["memchat_uncached_tokens"]) for r in rows[1:]]), 1),
        "naive_uncached_tokens_per_turn": round(mean([float(r["naive_uncached_tokens"]) for r in rows[1:]]), 1),
        "per_turn": rows,
    }
    payload["target_met"] = payload["speedup_last"] >= TARGET_SPEEDUP
    if plot:
        payload["plot"] = str(_plot(rows))
    return payload


def _plot(rows: list[dict[str, Any]]) -> Any:
    pyplot = plt()
    xs = [r["turn"] for r in rows]
    fig, (a1, a2) = pyplot.subplots(2, 1, figsize=(9, 6), sharex=True)
    a1.plot(xs, [r["memchat_ttft_s"] for r in rows], label="memchat", linewidth=1)
    a1.plot(xs, [r["naive_ttft_s"] for r in rows], label="naive (memory on top, sliding window)", linewidth=1)
    a1.set_ylabel("time to first token (s)")
    a1.legend(loc="upper left")
    a2.plot(xs, [r["memchat_prompt_tokens"] for r in rows], label="memchat", linewidth=1)
    a2.plot(xs, [r["naive_prompt_tokens"] for r in rows], label="naive", linewidth=1)
    a2.set_ylabel("prompt tokens (Qwen count)")
    a2.set_xlabel("turn")
    a2.legend(loc="upper left")
    fig.suptitle("Embedded llama.cpp (Gemma 3 270M): TTFT per turn")
    fig.tight_layout()
    path = out_dir() / "ttft.png"
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
    return path


def table(p: dict[str, Any]) -> Table:
    t = Table(title=f"Time to first token, embedded llama.cpp (Gemma 3 270M), {p['turns']} turns")
    t.add_column("")
    t.add_column("memchat", justify="right")
    t.add_column("naive", justify="right")
    t.add_column("speedup", justify="right")
    t.add_row(f"TTFT at turn {p['turns']} (s)", f"{p['memchat_ttft_s_last']:.3f}", f"{p['naive_ttft_s_last']:.3f}",
              f"{p['speedup_last']:.1f}× ({'≥' if p['target_met'] else '<'} {TARGET_SPEEDUP:.0f}× target)")
    t.add_row("TTFT, mean of the last 10 turns (s)", f"{p['memchat_ttft_s_last10_mean']:.3f}",
              f"{p['naive_ttft_s_last10_mean']:.3f}", f"{p['speedup_last10']:.1f}×")
    t.add_row(f"prompt tokens at turn {p['turns']} (memchat reuse {p['memchat_reuse_last']:.2f})",
              str(p["memchat_prompt_tokens_last"]), str(p["naive_prompt_tokens_last"]), "")
    t.add_row("uncached prompt tokens / turn, mean (turn ≥ 2)", f"{p['memchat_uncached_tokens_per_turn']:.0f}",
              f"{p['naive_uncached_tokens_per_turn']:.0f}", "")
    hi, nv = p["memchat_ttft_s_high_reuse_mean"], p["naive_ttft_s_same_turns_mean"]
    t.add_row("TTFT on turns with prefix reuse ≥ 0.8 (s)", f"{hi:.3f}", f"{nv:.3f}", f"{nv / max(hi, 1e-6):.1f}×")
    t.add_row(f"TTFT on the {p['low_reuse_turns']} turns with reuse < 0.8 (compaction, rebase) (s)",
              f"{p['memchat_ttft_s_low_reuse_mean']:.3f}", "", "")
    return t


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="memchat bench ttft", description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--window", type=int, default=10, help="turns in the naive layout's sliding window")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="reply length cap of memchat's turns (default: the settings' llm_max_tokens)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--per-turn", action="store_true", help="keep the per-turn series in the JSON")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    a = ap.parse_args(argv)
    p = run(a.turns, a.window, a.max_tokens, a.seed, quiet=a.quiet, plot=not a.no_plot)
    out = dict(p) if a.per_turn else {k: v for k, v in p.items() if k != "per_turn"}
    notes = [f"server startup {p['server_startup_s']} s (not counted)"]
    if p.get("plot"):
        notes.append(f"plot: {p['plot']}")
    emit([table(p)], out, a.json, notes)
    return 0
