"""Load: many conversations in parallel against one memchat server, checked for lost turns and cross-talk.

``memchat bench load [--threads 50] [--turns 20] [--stream] [--url URL --key KEY] [--set KEY=VALUE] [--json]``

Without ``--url`` it starts the SGLang stub LLM (``tests/support/sglang_stub.py``, a subprocess: near-zero LLM
time, so the figures are memchat's own cost) and a memchat server on a temporary data dir (``memchat
serve`` in a subprocess, or in this process with ``--server thread``), then ``--threads`` client threads each
run one conversation of ``--turns`` turns through ``POST /v1/chat/completions`` with ``X-Thread-ID``.

Every message starts with a marker naming its run, thread and turn (``[ab12-t007-n003]``). The stub echoes
the start of the last user message, so each reply must carry its own thread's marker (when no recalled
memory was put in front of the message; always with ``--strict``), and no reply may carry another
thread's. Afterwards each thread's ``/v1/threads/{id}/memory`` must show exactly ``--turns`` turns, its own
recent turns in order, and nothing of any other thread. Reported: turns per second, client latency
p50/p95/p99 (and time to the first token with ``--stream``), errors, lost turns, cross-talk, and from the
server's ``/metrics`` the LLM calls by kind and the cached-token ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from memchat.bench.common import emit, parse_overrides, pct
from memchat.bench.load_sweep import parse_sweep, server_cpu, sweep_plot, sweep_table
from memchat.bench.stack import SERVER_PIDS, memchat_server, stub_llm

__all__ = ["main", "marker", "memchat_server", "run_load", "stub_llm"]


@dataclass
class Tally:
    """What the client saw (shared by the worker threads)."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    compaction_ttfts: list[float] = field(default_factory=list)  # turns whose summarize step folds L0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    crosstalk: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def problem(self, text: str, crosstalk: bool = True) -> None:
        with self.lock:
            if crosstalk:
                self.crosstalk += 1
            if len(self.problems) < 20:
                self.problems.append(text)


def marker(run: str, thread: int, turn: int) -> str:
    """The marker that starts message ``turn`` (1-based) of ``thread``."""
    return f"[{run}-t{thread:03d}-n{turn:03d}]"


def _post_turn(client: httpx.Client, tid: str, body: dict[str, Any], stream: bool, t0: float) -> tuple[str, float | None, Any]:
    """Send one turn: its reply, the time to its first token (streamed) and the recalled count (not streamed)."""
    if not stream:
        resp = client.post("/v1/chat/completions", json=body, headers={"X-Thread-ID": tid})
        if resp.status_code != 200:
            raise _Status(resp)
        data = resp.json()
        return data["choices"][0]["message"]["content"] or "", None, (data.get("memchat") or {}).get("retrieved")
    parts: list[str] = []
    first: float | None = None
    with client.stream("POST", "/v1/chat/completions", json=body, headers={"X-Thread-ID": tid}) as resp:
        if resp.status_code != 200:
            resp.read()
            raise _Status(resp)
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(f"stream error: {data['error'].get('code')}")
            for choice in data.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if first is None:
                        first = time.perf_counter() - t0
                    parts.append(text)
    return "".join(parts), first, None


def run_load(base: str, key: str | None, *, threads: int = 50, turns: int = 20, users: int = 0, stream: bool = False,
             echo: bool = True, strict: bool = False, run: str | None = None, timeout: float = 300.0,
             warmup: bool = True, on_turn: Callable[[], None] | None = None, l0_turns: int = 5,
             cpu: Callable[[], float | None] | None = None) -> dict[str, Any]:
    """Run ``threads`` conversations of ``turns`` turns in parallel against ``base``; check and measure.

    ``echo``: the server's LLM echoes the last user message (the stub): replies must carry their own
    marker when nothing recalled was put in front of the message (``strict``: always). ``users``: distinct
    user ids (0: one per thread). ``warmup``: one untimed turn on a thread of its own first. ``l0_turns``: the
    server's N, to split the first-token times of compaction turns (2N+1, 3N+1, …) from the others. ``cpu``:
    the server's CPU seconds so far (:func:`server_cpu`), read around the timed part."""
    run = run or secrets.token_hex(2)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    tally = Tally()
    tids = [f"load-{run}-{i:03d}" for i in range(threads)]
    limits = httpx.Limits(max_connections=threads + 8, max_keepalive_connections=threads + 8)
    client = httpx.Client(base_url=base, headers=headers, timeout=timeout, limits=limits)
    if warmup:  # load the embedder, tokenizer and connections before the clock starts
        client.post("/v1/chat/completions", headers={"X-Thread-ID": f"load-{run}-warmup"},
                    json={"model": "memchat", "user": f"load-{run}-warmup",
                          "messages": [{"role": "user", "content": "warm-up: how does this work?"}]})
    before = _scrape(client)
    conversation = partial(_conversation, client, tally, run, turns=turns, users=users, stream=stream, echo=echo,
                           strict=strict, l0_turns=l0_turns, on_turn=on_turn)
    cpu0 = cpu() if cpu else None
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="load") as pool:
        list(pool.map(conversation, range(threads), tids))
    wall = time.perf_counter() - t0
    cpu1 = cpu() if cpu else None
    lost = _check_memory(client, tally, run, tids, turns)
    after = _scrape(client)
    client.close()
    return _result(tally, run, threads, turns, stream, lost, wall, cpu0, cpu1, before, after)


def _foreign(text: str, run: str, own: int) -> list[str]:
    """The markers of this run's other threads in ``text``."""
    pattern = re.compile(rf"\[{re.escape(run)}-t(\d{{3}})-n(\d{{3}})\]")
    return [m.group(0) for m in pattern.finditer(text) if int(m.group(1)) != own]


def _conversation(client: httpx.Client, tally: Tally, run: str, i: int, tid: str, *, turns: int, users: int,
                  stream: bool, echo: bool, strict: bool, l0_turns: int, on_turn: Callable[[], None] | None) -> None:
    """Thread ``i``'s turns, each timed and its reply checked for its own marker and other threads'."""
    user = f"load-{run}-u{(i % users) if users else i:03d}"
    for n in range(1, turns + 1):
        mark = marker(run, i, n)
        body = {"model": "memchat", "user": user, "stream": stream,
                "messages": [{"role": "user", "content": f"{mark} question {n}: how does step {n} work?"}]}
        t0 = time.perf_counter()
        try:
            reply, first, recalled = _post_turn(client, tid, body, stream, t0)
        except (_Status, httpx.HTTPError, RuntimeError, ValueError, KeyError) as exc:
            kind = str(exc.status) if isinstance(exc, _Status) else type(exc).__name__
            with tally.lock:
                tally.errors[kind] += 1
            why = f"HTTP {exc.status} {exc.text[:160]}" if isinstance(exc, _Status) else f"{kind}: {exc}"
            tally.problem(f"{tid} turn {n}: {why}", crosstalk=False)
            continue
        elapsed = time.perf_counter() - t0
        with tally.lock:
            tally.ok += 1
            tally.latencies.append(elapsed)
            if first is not None:
                compaction = n > 2 * l0_turns and (n - 1) % l0_turns == 0
                (tally.compaction_ttfts if compaction else tally.ttfts).append(first)
        if on_turn is not None:
            on_turn()
        for other in _foreign(reply, run, i):
            tally.problem(f"{tid} turn {n}: the reply carries {other}")
        if echo and (strict or recalled == 0) and mark not in reply:
            tally.problem(f"{tid} turn {n}: the reply lacks {mark}: {reply[:80]!r}")


def _check_memory(client: httpx.Client, tally: Tally, run: str, tids: list[str], turns: int) -> int:
    """Check what the server kept of each thread (its turns, in order, nothing foreign); the turns lost."""
    lost = 0
    for i, tid in enumerate(tids):
        r = client.get(f"/v1/threads/{tid}/memory")
        if r.status_code != 200:
            lost += turns
            tally.problem(f"{tid}: /memory answered {r.status_code}", crosstalk=False)
            continue
        mem = r.json()
        if mem["turns"] != turns:
            lost += max(0, turns - int(mem["turns"]))
            tally.problem(f"{tid}: {mem['turns']} turns kept, {turns} sent", crosstalk=False)
        recent = mem.get("recent_turns") or []
        expect = list(range(int(mem["turns"]) - len(recent) + 1, int(mem["turns"]) + 1))
        if [t["turn"] for t in recent] != expect:
            tally.problem(f"{tid}: recent turns {[t['turn'] for t in recent]}, expected {expect}")
        for t in recent:
            if not t["user"].startswith(marker(run, i, int(t["turn"]))):
                tally.problem(f"{tid}: recent turn {t['turn']} is {t['user'][:40]!r}")
        for item in mem.get("retrieved") or []:
            if item.get("kind") == "turn" and item.get("thread_id") != tid:
                tally.problem(f"{tid}: recalled a turn of {item.get('thread_id')}")
        for other in _foreign(json.dumps(mem, ensure_ascii=False), run, i):
            tally.problem(f"{tid}: its memory holds {other}")
    return lost


def _result(tally: Tally, run: str, threads: int, turns: int, stream: bool, lost: int, wall: float, cpu0: float | None,
            cpu1: float | None, before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    """The JSON payload: counts, throughput, latency, server CPU, first-token times, server metrics."""
    lat = [x * 1000 for x in tally.latencies]
    out: dict[str, Any] = {
        "bench": "load", "run": run, "threads": threads, "turns_per_thread": turns, "stream": stream,
        "turns_sent": threads * turns, "turns_ok": tally.ok, "errors": sum(tally.errors.values()),
        "errors_by_kind": dict(tally.errors), "lost_turns": lost, "crosstalk": tally.crosstalk,
        "wall_s": round(wall, 2), "turns_per_s": round(tally.ok / wall, 2) if wall else 0.0,
        "latency_ms": {"p50": round(pct(lat, 50), 1), "p95": round(pct(lat, 95), 1), "p99": round(pct(lat, 99), 1),
                       "max": round(max(lat), 1) if lat else 0.0},
        "problems": tally.problems,
    }
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_s"] = round(cpu1 - cpu0, 2)
        out["cpu_s_per_turn"] = round((cpu1 - cpu0) / tally.ok, 4) if tally.ok else None
        out["server_cores_busy"] = round((cpu1 - cpu0) / wall, 2) if wall else None
    if tally.ttfts or tally.compaction_ttfts:
        ttft = [x * 1000 for x in tally.ttfts + tally.compaction_ttfts]
        out["ttft_ms"] = {"p50": round(pct(ttft, 50), 1), "p95": round(pct(ttft, 95), 1)}
        for name, xs in (("compaction", tally.compaction_ttfts), ("other", tally.ttfts)):
            ms = [x * 1000 for x in xs]
            out["ttft_ms"][name] = {"turns": len(ms), "p50": round(pct(ms, 50), 1), "p95": round(pct(ms, 95), 1)}
        other = out["ttft_ms"]["other"]["p95"]
        if tally.compaction_ttfts and other:
            out["ttft_ms"]["compaction_p95_ratio"] = round(out["ttft_ms"]["compaction"]["p95"] / other, 3)
    if before is not None and after is not None:
        calls = {k: after.get(f'memchat_llm_calls_total{{kind="{k}"}}', 0) - before.get(f'memchat_llm_calls_total{{kind="{k}"}}', 0)
                 for k in ("respond", "summary", "extraction")}
        prompt = after.get("memchat_prompt_tokens_total", 0) - before.get("memchat_prompt_tokens_total", 0)
        cached = after.get("memchat_cached_tokens_total", 0) - before.get("memchat_cached_tokens_total", 0)
        out["server"] = {"llm_calls": {k: int(v) for k, v in calls.items()},
                         "cached_token_ratio": round(cached / prompt, 4) if prompt else None,
                         "prompt_tokens_per_turn": round(prompt / tally.ok, 1) if tally.ok else None}
    return out


class _Status(Exception):
    def __init__(self, resp: httpx.Response) -> None:
        super().__init__(resp.status_code)
        self.status = resp.status_code
        self.text = resp.text


def _scrape(client: httpx.Client) -> dict[str, float] | None:
    try:
        r = client.get("/metrics")
        if r.status_code != 200:
            return None
        from memchat.server.metrics import samples

        return samples(r.text)
    except (httpx.HTTPError, ValueError, ImportError):
        return None


def table(res: dict[str, Any], where: str) -> Table:
    """The result as a rich table."""
    t = Table(title=f"memchat bench load — {res['threads']} threads × {res['turns_per_thread']} turns ({where})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [("turns ok / sent", f"{res['turns_ok']} / {res['turns_sent']}"),
            ("turns per second", f"{res['turns_per_s']:.1f}"),
            ("latency p50 / p95 / p99 (ms)",
             f"{res['latency_ms']['p50']:.0f} / {res['latency_ms']['p95']:.0f} / {res['latency_ms']['p99']:.0f}"),
            ("wall time (s)", f"{res['wall_s']:.1f}")]
    if res.get("cpu_s_per_turn") is not None:
        rows.append(("server CPU per turn (ms)", f"{res['cpu_s_per_turn'] * 1000:.0f}"))
        rows.append(("server cores busy (CPU s / wall s)", f"{res['server_cores_busy']:.2f}"))
    if "ttft_ms" in res:
        tt = res["ttft_ms"]
        rows.append(("time to first token p50 / p95 (ms)", f"{tt['p50']:.0f} / {tt['p95']:.0f}"))
        for name in ("compaction", "other"):
            if tt.get(name, {}).get("turns"):
                rows.append((f"  {name} turns ({tt[name]['turns']}) p50 / p95 (ms)",
                             f"{tt[name]['p50']:.0f} / {tt[name]['p95']:.0f}"))
        if "compaction_p95_ratio" in tt:
            rows.append(("  compaction / other p95", f"{tt['compaction_p95_ratio']:.2f}"))
    rows += [("errors", str(res["errors"])), ("lost turns", str(res["lost_turns"])), ("cross-talk", str(res["crosstalk"]))]
    srv = res.get("server")
    if srv:
        c = srv["llm_calls"]
        rows.append(("LLM calls respond / summary / extraction", f"{c['respond']} / {c['summary']} / {c['extraction']}"))
        if srv.get("cached_token_ratio") is not None:
            rows.append(("cached-token ratio (backend)", f"{srv['cached_token_ratio']:.1%}"))
    for k, v in rows:
        t.add_row(k, v)
    return t


def main(argv: list[str] | None = None) -> int:
    """``memchat bench load``; exit status 1 when a turn was lost, failed or crossed threads."""
    ap = argparse.ArgumentParser(prog="memchat bench load", description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--threads", type=int, default=50, help="conversations in parallel")
    ap.add_argument("--turns", type=int, default=20, help="turns per conversation")
    ap.add_argument("--users", type=int, default=0, help="distinct users (default: one per thread)")
    ap.add_argument("--stream", action="store_true", help="stream the replies (SSE) and measure the first token")
    ap.add_argument("--url", help="a running memchat server (default: start the stub LLM and a server here)")
    ap.add_argument("--key", default=os.environ.get("MEMCHAT_API_KEY"), help="its API key (MEMCHAT_API_KEY)")
    ap.add_argument("--no-echo", action="store_true", help="the server's LLM does not echo (a real model)")
    ap.add_argument("--strict", action="store_true", help="every reply must carry its marker")
    ap.add_argument("--server", choices=("process", "thread"), default="process",
                    help="the local server: memchat serve in a subprocess, or uvicorn in a thread here")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="settings of the local server")
    ap.add_argument("--workers", type=int, default=1, help="memchat serve --workers of the local server (above 1, "
                    "serve starts a Chroma server for them; its CPU counts as the server's)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    ap.add_argument("--llm-delay", type=float, default=0.0, help="seconds the stub LLM waits before each answer")
    ap.add_argument("--sweep", help="concurrencies to run one after another (e.g. 1,10,50): a table and a PNG")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    a = ap.parse_args(argv)
    if a.threads < 1 or a.turns < 1 or a.workers < 1:
        ap.error("--threads, --turns and --workers must be at least 1")
    if a.workers > 1 and a.server == "thread":
        ap.error("--workers above 1 needs --server process")
    overrides = parse_overrides(a.set)
    kw = dict(threads=a.threads, turns=a.turns, users=a.users, stream=a.stream, strict=a.strict, timeout=a.timeout,
              l0_turns=int(overrides.get("l0_turns", 5)))
    if a.url:
        res = run_load(a.url.rstrip("/"), a.key, echo=not a.no_echo, **kw)  # type: ignore[arg-type]
        where = a.url
    else:
        key = secrets.token_urlsafe(16)
        with stub_llm(a.llm_delay) as llm, tempfile.TemporaryDirectory(prefix="memchat-bench-load-") as d, \
                memchat_server(llm, Path(d), key, overrides, a.server, workers=a.workers) as base:
            cpu = server_cpu(base, SERVER_PIDS)
            if a.sweep:
                return _sweep(base, key, parse_sweep(a.sweep), kw, cpu, a.json)
            res = run_load(base, key, echo=True, cpu=cpu, **kw)  # type: ignore[arg-type]
        where = (f"stub LLM, memchat serve {'subprocess' if a.server == 'process' else 'in-process'}"
                 + (f", {a.workers} workers, Chroma server" if a.workers > 1 else ""))
        res["workers"] = a.workers
        res["settings"] = overrides
        res["llm_delay_s"] = a.llm_delay
    res["where"] = where
    res["cpus"] = os.cpu_count()
    emit([table(res, where)], res, a.json, notes=[f"problem: {p}" for p in res["problems"][:10]])
    return 0 if res["errors"] == 0 and res["lost_turns"] == 0 and res["crosstalk"] == 0 else 1


def _sweep(base: str, key: str, threads: list[int], kw: dict[str, Any], cpu: Any, as_json: bool) -> int:
    runs = [run_load(base, key, echo=True, cpu=cpu, warmup=i == 0, **{**kw, "threads": n})
            for i, n in enumerate(threads)]
    where = "stub LLM, local memchat serve"
    res = {"bench": "load-sweep", "runs": runs, "cpus": os.cpu_count(), "plot": str(sweep_plot(runs))}
    emit([sweep_table(runs, where)], res, as_json, notes=[f"plot: {res['plot']}"])
    return 0 if all(r["errors"] == 0 and r["lost_turns"] == 0 and r["crosstalk"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
