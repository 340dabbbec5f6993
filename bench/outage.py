"""Store outages under load: ``memchat bench outage [--threads 6] [--turns 12] [--down 10] [--json]``.

Starts PostgreSQL and a Chroma server on loopback (``tests/support/services.py``), each behind a TCP proxy that can be
cut (:mod:`memchat.bench.netcut`), the SGLang stub LLM and ``memchat serve`` over them, then runs conversations in
parallel while PostgreSQL and then Chroma are taken away for ``--down`` seconds each. Clients retry a turn that
answered 503/409/504 with the same ``Idempotency-Key`` (so a turn committed before its answer was lost is
replayed, never run twice). Checked afterwards: no 500, no request slower than the turn deadline + 1 s, every
acknowledged turn kept (lost 0), each thread whole (turns in order, each with its reply: half-written 0),
each message once in the vector store (duplicated 0, missing 0 once the outbox is drained), and the time from
each store's return to the first answered turn.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from memchat.bench.common import emit
from memchat.bench.load import marker
from memchat.bench.netcut import TcpProxy

RETRY_CODES = {503, 409, 504}


class Run:
    """What the clients saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: Counter[str] = Counter()  # "200", "503 checkpoint_unavailable", ...
        self.acked: dict[str, int] = {}  # thread id -> last acknowledged turn
        self.slowest = 0.0
        self.answered: list[float] = []  # monotonic times of 200s

    def saw(self, resp: httpx.Response | None, took: float) -> None:
        if resp is None:
            key = "no answer"
        else:
            code = ""
            if resp.status_code != 200:
                try:
                    code = " " + str(resp.json()["error"]["code"])
                except Exception:
                    code = ""
            key = f"{resp.status_code}{code}"
        with self.lock:
            self.status[key] += 1
            self.slowest = max(self.slowest, took)
            if resp is not None and resp.status_code == 200:
                self.answered.append(time.monotonic())


def run_outage(base: str, key: str | None, cuts: dict[str, TcpProxy], *, threads: int = 6, turns: int = 12,
               down: float = 10.0, gap: float = 4.0, turn_limit: float = 120.0) -> dict[str, Any]:
    """Conversations on ``base`` while each proxy in ``cuts`` is down for ``down`` seconds in turn."""
    run_id = secrets.token_hex(2)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = httpx.Client(base_url=base, headers=headers, timeout=turn_limit,
                          limits=httpx.Limits(max_connections=threads + 8))
    run = Run()
    tids = [f"outage-{run_id}-{i:03d}" for i in range(threads)]
    stop = threading.Event()
    conversation = partial(_conversation, client, run, run_id, stop, turns=turns, turn_limit=turn_limit)
    outages: list[dict[str, Any]] = []
    t0 = time.monotonic()
    cut = threading.Thread(target=_cutter, args=(cuts, outages, stop, down, gap), daemon=True)
    cut.start()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(conversation, range(threads), tids))
    cut.join(2 * down + 4 * gap)
    wall = time.monotonic() - t0
    _recovery(outages, run.answered)
    drained = _drain(client)
    checks = _check(client, tids, run, turns, lambda i, n: marker(run_id, i, n))
    client.close()
    return {"bench": "outage", "threads": threads, "turns_per_thread": turns, "wall_s": round(wall, 1),
            "requests": sum(run.status.values()), "status": dict(run.status),
            "http_500": sum(v for k, v in run.status.items() if k.startswith("500")),
            "slowest_request_s": round(run.slowest, 2), "outages": outages, "outbox_drained_s": drained, **checks}


def _conversation(client: httpx.Client, run: Run, run_id: str, stop: threading.Event, i: int, tid: str, *,
                  turns: int, turn_limit: float) -> None:
    """Thread ``i``: at least ``turns`` turns, and on until every store has been back a while (``stop``).

    A turn answered 503/409/504 (or not at all) is retried with the same ``Idempotency-Key`` for up to
    ``turn_limit`` seconds; any other error stops the conversation (it is reported)."""
    n = 0
    while n < turns or not stop.is_set():
        n += 1
        body = {"model": "memchat", "user": f"outage-{run_id}-u{i}",
                "messages": [{"role": "user", "content": f"{marker(run_id, i, n)} question {n}: how does "
                              f"step {n} work?"}]}
        give_up = time.monotonic() + turn_limit
        while time.monotonic() < give_up:
            t0 = time.monotonic()
            try:
                resp: httpx.Response | None = client.post(
                    "/v1/chat/completions", json=body, headers={"X-Thread-ID": tid, "Idempotency-Key": f"{tid}-{n}"})
            except httpx.HTTPError:
                resp = None
            run.saw(resp, time.monotonic() - t0)
            if resp is not None and resp.status_code == 200:
                with run.lock:
                    run.acked[tid] = n
                break
            if resp is not None and resp.status_code not in RETRY_CODES:
                return  # a 500 or a 4xx: reported, the conversation stops
            time.sleep(0.3)
        else:
            return


def _cutter(cuts: dict[str, TcpProxy], outages: list[dict[str, Any]], stop: threading.Event, down: float,
            gap: float) -> None:
    """Take each proxy down for ``down`` seconds in turn, ``gap`` seconds apart; note each outage; then ``stop``."""
    time.sleep(gap)
    for name, proxy in cuts.items():
        if stop.is_set():
            return
        t_down = time.monotonic()
        proxy.down()
        time.sleep(down)
        proxy.up()
        t_up = time.monotonic()
        outages.append({"store": name, "down_s": round(t_up - t_down, 1), "_up": t_up})
        time.sleep(gap)
    stop.set()


def _recovery(outages: list[dict[str, Any]], answered: list[float]) -> None:
    """Add each outage's recovery: from the store's return to the first answered turn after it."""
    for o in outages:
        after = [t for t in answered if t >= o["_up"]]
        o["recovery_s"] = round(min(after) - o["_up"], 2) if after else None
        del o["_up"]


def _drain(client: httpx.Client, limit: float = 60.0) -> float | None:
    """Seconds until the outbox is empty (``None`` if it is not within ``limit``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            if client.get("/health", timeout=10).json().get("outbox_depth") == 0:
                return round(time.monotonic() - t0, 1)
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    return None


def _check(client: httpx.Client, tids: list[str], run: Run, turns: int,
           mark: Callable[[int, int], str]) -> dict[str, Any]:
    lost = half = dup = missing = 0
    problems: list[str] = []
    for i, tid in enumerate(tids):
        acked = run.acked.get(tid, 0)
        mem = client.get(f"/v1/threads/{tid}/memory").json()
        kept = int(mem.get("turns") or 0)
        if kept != acked:  # fewer: an acknowledged turn lost; more: a turn kept twice or never acknowledged
            lost += abs(acked - kept)
            problems.append(f"{tid}: {acked} turns acknowledged, {kept} kept")
        recent = mem.get("recent_turns") or []
        if [t["turn"] for t in recent] != list(range(kept - len(recent) + 1, kept + 1)) or any(
                not t["assistant"] or not t["user"].startswith(mark(i, int(t["turn"]))) for t in recent):
            half += 1
            problems.append(f"{tid}: recent turns {[t['turn'] for t in recent]} not whole")
        stored = int((mem.get("memories") or {}).get("thread") or 0)
        dup += max(0, stored - 2 * kept)
        missing += max(0, 2 * kept - stored)
    return {"turns_acknowledged": sum(run.acked.values()), "lost_turns": lost, "half_written_threads": half,
            "duplicated_memories": dup, "missing_memories": missing, "problems": problems[:10]}


def table(res: dict[str, Any]) -> Table:
    t = Table(title="store outages under load")
    t.add_column("figure")
    t.add_column("value")
    for k in ("requests", "status", "http_500", "slowest_request_s", "outages", "outbox_drained_s",
              "turns_acknowledged", "lost_turns", "half_written_threads", "duplicated_memories", "missing_memories"):
        t.add_row(k, str(res.get(k)))
    return t


def main(argv: list[str] | None = None) -> int:
    """``memchat bench outage``; exit status 1 on a 500, a lost or duplicated turn or memory, or a half thread."""
    ap = argparse.ArgumentParser(prog="memchat bench outage")
    ap.add_argument("--threads", type=int, default=6)
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--down", type=float, default=10.0, help="seconds each store is away")
    ap.add_argument("--turn-timeout", type=float, default=20.0, help="MEMCHAT_TURN_TIMEOUT of the server")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = outage_stack(threads=a.threads, turns=a.turns, down=a.down, turn_timeout=a.turn_timeout)
    emit([table(res)], res, a.json, notes=[f"problem: {p}" for p in res["problems"]])
    return 0 if ok(res, a.turn_timeout) else 1


def ok(res: dict[str, Any], turn_timeout: float) -> bool:
    """Whether the run met the bar."""
    return (res["http_500"] == 0 and res["lost_turns"] == 0 and res["half_written_threads"] == 0
            and res["duplicated_memories"] == 0 and res["missing_memories"] == 0
            and res["slowest_request_s"] <= turn_timeout + 1 and "no answer" not in res["status"])


def outage_stack(*, threads: int, turns: int, down: float, turn_timeout: float, gap: float = 4.0,
                 pg_url: str | None = None, chroma_url: str | None = None) -> dict[str, Any]:
    """Start what is missing (PostgreSQL, Chroma, the stub LLM, ``memchat serve``), run, stop."""
    from urllib.parse import urlparse

    from memchat.bench.stack import memchat_server, stub_llm
    from tests.support import services

    started: list[Any] = []
    try:
        if pg_url is None:
            pg = services.start_postgres()
            started.append(pg)
            pg_url = pg.new_database("outage")
        if chroma_url is None:
            ch = services.start_chroma()
            started.append(ch)
            chroma_url = ch.url
        pu, cu = urlparse(pg_url), urlparse(chroma_url)
        cuts = {"postgresql": TcpProxy("127.0.0.1", int(pu.port or 5432)),
                "chroma": TcpProxy("127.0.0.1", int(cu.port or 8000))}
        overrides = {"checkpoint_url": pu._replace(netloc=pu.netloc.replace(f":{pu.port}",
                                                                           f":{cuts['postgresql'].port}")).geturl(),
                     "chroma_url": f"http://127.0.0.1:{cuts['chroma'].port}",
                     "chroma_collection": f"outage_{secrets.token_hex(4)}", "turn_timeout": turn_timeout,
                     "store_timeout": 2.0, "background_summaries": False, "llm_extraction": "false"}
        key = secrets.token_urlsafe(16)
        with stub_llm() as llm, tempfile.TemporaryDirectory(prefix="memchat-outage-") as d, \
                memchat_server(llm, Path(d), key, overrides, "process") as base:
            httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}",
                                                               "X-Thread-ID": "warm-up"}, timeout=120,
                       json={"model": "memchat", "messages": [{"role": "user", "content": "warm-up"}]})
            res = run_outage(base, key, cuts, threads=threads, turns=turns, down=down, gap=gap)
        for c in cuts.values():
            c.close()
        res["turn_timeout_s"] = turn_timeout
        return res
    finally:
        for svc in started:
            svc.stop()
