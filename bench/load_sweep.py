"""``memchat bench load`` helpers: the server's CPU time, and a sweep over concurrency (table + PNG).

CPU per turn = the server process's CPU seconds (user + system, its worker processes included) during the
timed part / the turns served. It is far less sensitive than turns per second to other work on a shared
machine. Known for a server this command started (``memchat serve`` subprocess); with ``--server thread`` it
is this whole process (the client included, so an upper bound); unknown with ``--url``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from memchat.bench.common import out_dir, plt


def server_cpu(base: str, pids: dict[str, int]) -> Callable[[], float | None] | None:
    """A function returning the server's CPU seconds so far, its worker processes and the Chroma server it
    starts for them included (None when it cannot be known)."""
    pid = pids.get(base)
    if pid is None:
        return time.process_time
    import psutil

    proc = psutil.Process(pid)

    def read() -> float | None:
        total = 0.0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                with_children = p.cpu_times()
                total += with_children.user + with_children.system
        except psutil.Error:
            return None
        return total
    return read


def parse_sweep(text: str) -> list[int]:
    """``1,10,50`` → [1, 10, 50]."""
    out = [int(x) for x in text.split(",") if x.strip()]
    if not out or min(out) < 1:
        raise SystemExit("--sweep wants concurrencies ≥ 1, e.g. 1,10,50")
    return out


def sweep_table(runs: list[dict[str, Any]], where: str) -> Table:
    """One row per concurrency."""
    t = Table(title=f"memchat bench load — concurrency sweep ({where})")
    for col in ("threads", "turns", "turns/s", "p50 ms", "p95 ms", "server CPU / turn (ms)", "cores busy",
                "lost", "cross-talk", "errors"):
        t.add_column(col, justify="right")
    for r in runs:
        cpu = r.get("cpu_s_per_turn")
        t.add_row(str(r["threads"]), str(r["turns_ok"]), f"{r['turns_per_s']:.1f}", f"{r['latency_ms']['p50']:.0f}",
                  f"{r['latency_ms']['p95']:.0f}", f"{cpu * 1000:.0f}" if cpu is not None else "—",
                  f"{r.get('server_cores_busy') or 0:.2f}", str(r["lost_turns"]), str(r["crosstalk"]), str(r["errors"]))
    return t


def sweep_plot(runs: list[dict[str, Any]]) -> Path:
    """Turns/s and CPU per turn against concurrency; p95 latency on a second panel."""
    pyplot = plt()
    fig, (a1, a2) = pyplot.subplots(1, 2, figsize=(10, 4))
    xs = [r["threads"] for r in runs]
    a1.plot(xs, [r["turns_per_s"] for r in runs], marker="o", label="turns/s")
    a1.set_xlabel("concurrent conversations")
    a1.set_ylabel("turns/s")
    cpu = [(r.get("cpu_s_per_turn") or 0) * 1000 for r in runs]
    b1 = a1.twinx()
    b1.plot(xs, cpu, marker="s", color="tab:red", label="server CPU ms / turn")
    b1.set_ylabel("server CPU ms per turn")
    a1.legend(loc="upper left")
    b1.legend(loc="lower right")
    a2.plot(xs, [r["latency_ms"]["p50"] for r in runs], marker="o", label="p50")
    a2.plot(xs, [r["latency_ms"]["p95"] for r in runs], marker="o", label="p95")
    a2.set_xlabel("concurrent conversations")
    a2.set_ylabel("latency (ms)")
    a2.legend()
    fig.tight_layout()
    path = out_dir() / "load_sweep.png"
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
    return path
