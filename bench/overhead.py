"""Memory work per turn, LLM time excluded: rules, embedding, retrieving, assembling, storing.

``memchat bench overhead [--sizes 1000,10000] [--turns 60] [--json]``

The store is pre-filled (in batches) with synthetic memories of one user spread over many threads,
then turns run on one of that user's threads doing exactly the memory work the nodes do: the rules
tier on the message (and on the previous reply), ``Engine.recall`` for the message, ``assemble`` of
the prompt with a verbatim window, and the upsert of the message, the reply and the free facts. The
reply is synthetic; no LLM is called. p50 and p95 per size; the first turns are warm-up.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from typing import Any

from rich.table import Table

from memchat.backends.engine import Engine
from memchat.backends.vectorstore import MemoryDoc, msg_id
from memchat.bench.common import (
    StubChatModel,
    bench_settings,
    emit,
    mean,
    out_dir,
    pct,
    plt,
    progress,
    temp_data_dir,
)
from memchat.bench.synth import CITIES, HOBBIES, NAMES, TOPICS, conversation
from memchat.memory.prompt import Turn, assemble, render_head
from memchat.memory.rules import extract_rules, free_facts

USER = "bench-user"
TARGET_P95_MS = 50.0
PARTS = ("rules", "retrieve", "assemble", "store")
VERBS = ["visited", "cooked", "fixed", "painted", "booked", "planned", "read about", "bought", "sold", "found"]
THINGS = ["a blue bicycle", "the garden shed", "a trip to the coast", "an old camera", "tickets for a concert",
          "a recipe for dumplings", "the kitchen sink", "a birthday present", "a used car", "a chess set"]


def synthetic_memory(rng: random.Random, i: int) -> str:
    """One plausible stored message."""
    return (f"On day {i % 365} I {rng.choice(VERBS)} {rng.choice(THINGS)} with {rng.choice(NAMES)} in "
            f"{rng.choice(CITIES)}; we talked about {rng.choice(TOPICS)} and {rng.choice(HOBBIES)}.")


def prefill(eng: Engine, n: int, threads: int = 100, batch: int = 500, quiet: bool = False) -> float:
    """Store ``n`` memories of USER over ``threads`` threads (and a few user-scoped facts); returns seconds."""
    rng = random.Random(n)
    t0 = time.perf_counter()
    seqs = [0] * threads
    for start in progress(range(0, n, batch), total=(n + batch - 1) // batch, desc=f"pre-fill {n}", quiet=quiet):
        docs = []
        for i in range(start, min(n, start + batch)):
            th = i % threads
            if i % 20 == 19:
                docs.append(MemoryDoc(id=f"fact:bench:{i}", text=f"I {rng.choice(VERBS)} {rng.choice(THINGS)}.",
                                      user_id=USER, thread_id=f"t{th}", kind="fact", scope="user",
                                      date="2025-01-01 10:00"))
                continue
            seqs[th] += 1
            docs.append(MemoryDoc(id=msg_id(f"t{th}", seqs[th]), text=synthetic_memory(rng, i), user_id=USER,
                                  thread_id=f"t{th}", kind="turn", speaker="user" if seqs[th] % 2 else "assistant",
                                  turn=(seqs[th] + 1) // 2, seq=seqs[th], date=f"2025-{1 + i % 12:02d}-{1 + i % 28:02d} 10:00"))
        eng.store_docs(docs)
    return time.perf_counter() - t0


def measure(eng: Engine, turns: int, warmup: int, quiet: bool = False) -> dict[str, Any]:
    """Run ``turns`` turns of memory work on a fresh thread; per-part timings in ms (warm-up excluded)."""
    s = eng.settings
    tid = "bench-overhead-thread"
    msgs = conversation(turns + warmup, seed=11)
    head = render_head(s.persona, {}, None)
    window: list[Turn] = []
    times: dict[str, list[float]] = {p: [] for p in PARTS + ("total",)}
    prev_reply = ""
    first_ms = 0.0
    for i, msg in enumerate(progress(msgs, desc="turns", quiet=quiet), start=1):
        t0 = time.perf_counter()
        extract_rules(msg, "user")
        if prev_reply:
            extract_rules(prev_reply, "assistant")
        facts = free_facts(msg)
        t1 = time.perf_counter()
        shown = {m["id"] for t in window for m in t.memories}
        exclude = {msg_id(tid, 2 * t.turn + d) for t in window for d in (-1, 0)} | shown
        memories = eng.recall(msg, user_id=USER, thread_id=tid, budget_tokens=s.memory_tokens, exclude_ids=exclude)
        t2 = time.perf_counter()
        asm = assemble(settings=s, budget=eng.budget, head=head, l1=[], turns=window, message=msg,
                       memories=memories, notes=[])
        t3 = time.perf_counter()
        reply = f"Noted: {' '.join(msg.split()[:12])}"
        docs = [MemoryDoc(id=msg_id(tid, 2 * i - 1), text=msg, user_id=USER, thread_id=tid, kind="turn",
                          speaker="user", turn=i, seq=2 * i - 1, date="2025-06-01 12:00"),
                MemoryDoc(id=msg_id(tid, 2 * i), text=reply, user_id=USER, thread_id=tid, kind="turn",
                          speaker="assistant", turn=i, seq=2 * i, date="2025-06-01 12:00")]
        docs += [MemoryDoc(id=f"fact:{USER}:{hash(f)}", text=f, user_id=USER, thread_id=tid, kind="fact",
                           turn=i, scope="user", date="2025-06-01 12:00") for f in facts]
        eng.store_docs(docs)
        t4 = time.perf_counter()
        window.append(Turn(i, msg, reply, asm.memories, []))
        if len(window) >= 2 * s.l0_turns:  # compaction folds the oldest N turns
            window = window[s.l0_turns:]
        prev_reply = reply
        if i == 1:
            first_ms = 1000 * (t4 - t0)
        if i <= warmup:
            continue
        for name, dt in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[name].append(1000 * dt)
        times["total"].append(1000 * (t4 - t0))
    out: dict[str, Any] = {p: {"p50": round(pct(v, 50), 2), "p95": round(pct(v, 95), 2), "mean": round(mean(v), 2)}
                           for p, v in times.items()}
    out["first_turn_ms"] = round(first_ms, 1)
    out["samples"] = times["total"]
    return out


def run(sizes: list[int], turns: int = 60, warmup: int = 5, quiet: bool = False, plot: bool = True,
        threads: int | None = None, store: str | None = None) -> dict[str, Any]:
    """Measure at each store size; returns the JSON payload."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    for n in sizes:
        with temp_data_dir("overhead") as tmp:
            eng = Engine(bench_settings(tmp, **({"vector_store": store} if store else {})), llm=StubChatModel())
            eng.recall("warm up", user_id=USER, thread_id=None, budget_tokens=10)  # model load is not per-turn work
            eng.tokenizer.count("warm up")
            fill_s = prefill(eng, n, quiet=quiet)
            r = measure(eng, turns, warmup, quiet=quiet)
            r["stored"] = eng.memory.count()
            r["vector_store"] = eng.settings.vector_store
            r["prefill_s"] = round(fill_s, 1)
            results[str(n)] = r
    biggest = results[str(max(sizes))]
    payload: dict[str, Any] = {
        "sizes": {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in results.items()},
        "p95_ms_at_largest": biggest["total"]["p95"],
        "largest": max(sizes),
        "vector_store": biggest["vector_store"],
        "turns_measured": turns,
        "cpu_count": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "target_p95_ms": TARGET_P95_MS,
        "target_met": biggest["total"]["p95"] <= TARGET_P95_MS,
    }
    if plot:
        payload["plot"] = str(_plot(results))
    return payload


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _plot(results: dict[str, Any]) -> Any:
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4))
    for n, r in results.items():
        xs = sorted(r["samples"])
        ax.plot(xs, [i / max(1, len(xs) - 1) for i in range(len(xs))], label=f"{int(n):,} memories")
    ax.axvline(TARGET_P95_MS, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("memory work per turn (ms)")
    ax.set_ylabel("share of turns")
    ax.set_title("Per-turn memory overhead (LLM excluded), CDF")
    ax.legend()
    fig.tight_layout()
    path = out_dir() / "overhead_cdf.png"
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
    return path


def table(p: dict[str, Any]) -> Table:
    t = Table(title=f"Memory work per turn, LLM excluded ({p['vector_store']}; {p['turns_measured']} turns; {p['cpu_count']} CPUs, "
                    f"torch threads {p['torch_threads']}, load avg {p['load_avg'][0]})")
    t.add_column("stored memories", justify="right")
    for part in PARTS:
        t.add_column(f"{part} p50/p95", justify="right")
    t.add_column("total p50", justify="right")
    t.add_column("total p95", justify="right")
    t.add_column("first turn (cold)", justify="right")
    for n, r in p["sizes"].items():
        t.add_row(f"{int(n):,}", *[f"{r[x]['p50']:.1f} / {r[x]['p95']:.1f}" for x in PARTS], f"{r['total']['p50']:.1f}",
                  f"{r['total']['p95']:.1f}", f"{r['first_turn_ms']:.0f}")
    return t


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="memchat bench overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000", help="comma-separated store sizes")
    ap.add_argument("--turns", type=int, default=60, help="measured turns per size")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--store", choices=["chroma", "milvus"], default=None,
                    help="vector store (default: MEMCHAT_VECTOR_STORE, else chroma)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    p = run(sizes, a.turns, a.warmup, quiet=a.quiet, plot=not a.no_plot, threads=a.threads, store=a.store)
    notes = [f"target p95 <= {TARGET_P95_MS:.0f} ms at {p['largest']:,} memories: "
             f"{'met' if p['target_met'] else 'NOT met'} ({p['p95_ms_at_largest']:.1f} ms)"]
    if p.get("plot"):
        notes.append(f"plot: {p['plot']}")
    emit([table(p)], p, a.json, notes)
    return 0
