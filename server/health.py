"""``/health`` (liveness: the LLM backend and each store, always 200) and ``/ready`` (readiness for load
balancers: 503 while the LLM backend, the checkpoint database, the key-value store or the vector store cannot
be reached), and the outbox depth on ``/metrics``.

Each store is probed with a trivial query bounded by ``MEMCHAT_STORE_TIMEOUT`` seconds, so a dead store is
reported in seconds, not after a 30 s pool timeout.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

router = APIRouter(tags=["meta"])


class OutboxCollector(Collector):
    """``memchat_outbox_depth``: vector-memory writes of answered turns waiting for the vector store."""

    def __init__(self, depth: Callable[[], int]) -> None:
        self.depth = depth

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("memchat_outbox_depth", "Vector-memory documents of answered turns waiting in "
                                "the durable outbox for the vector store (replayed when it answers)",
                                value=float(self.depth()))


def _sql_probe(obj: Any, timeout: float) -> None:
    """``SELECT 1`` on the pool or SQLite connection behind a checkpointer or store."""
    conn = getattr(obj, "conn", None)
    if conn is None:
        return
    if isinstance(conn, sqlite3.Connection):
        conn.execute("SELECT 1")
        return
    with conn.connection(timeout=timeout) as c:
        c.execute("SELECT 1")


def _probes(server: Any) -> dict[str, Callable[[], Any]]:
    mc = server.memchat
    timeout = float(server.settings.store_timeout)
    return {"checkpoints": lambda: _sql_probe(mc.checkpointer, timeout),
            "store": lambda: _sql_probe(mc.store, timeout),
            "vector_store": lambda: _vector_probe(mc.engine, timeout)}


def _vector_probe(engine: Any, timeout: float) -> None:
    """Count the collection; before the vector memory is opened (it loads the embedder), a Chroma server's
    heartbeat (an embedded store needs nothing)."""
    mem = getattr(engine, "_memory", None)
    if mem is not None:
        mem.count()
        return
    url = engine.settings.chroma_url if engine.settings.vector_store == "chroma" else ""
    if url:
        import httpx

        base = (url if "://" in url else f"http://{url}").rstrip("/")
        httpx.get(f"{base}/api/v2/heartbeat", timeout=timeout).raise_for_status()


async def store_status(server: Any) -> dict[str, dict[str, Any]]:
    """Each store's reachability: ``{"checkpoints": {"ok": bool, "ms": float, "error"?: str}, ...}``."""
    timeout = float(server.settings.store_timeout)

    async def one(probe: Callable[[], Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(server.call(probe), timeout)
        except Exception as exc:  # a probe reports, it never raises
            msg = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"[:300]
            return {"ok": False, "ms": round((time.perf_counter() - t0) * 1000, 1), "error": msg}
        return {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 1)}

    probes = _probes(server)
    results = await asyncio.gather(*(one(p) for p in probes.values()))
    return dict(zip(probes, results))


async def _report(request: Request) -> tuple[bool, dict[str, Any]]:
    server = request.app.state.server
    status = await server.probe()
    body = status.public()
    stores = await store_status(server)
    body["stores"] = stores
    body["outbox_depth"] = server.memchat.outbox.depth()
    up = status.state == "ok" and all(s["ok"] for s in stores.values())
    if status.state == "ok" and not up:
        body["status"] = "degraded"
    return up, body


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness (always 200): the LLM backend's state and each store's reachability; ``status`` is ``ok``
    only when all answer. No auth."""
    return (await _report(request))[1]


@router.get("/ready", responses={503: {"description": "The LLM backend or a store is unreachable"}})
async def ready(request: Request) -> JSONResponse:
    """Readiness for load balancers: 200 when the LLM backend and every store answer, else 503. No auth."""
    up, body = await _report(request)
    return JSONResponse(body, status_code=200 if up else 503)


def mount(app: FastAPI, server: Any) -> None:
    """Add ``/health``, ``/ready`` and the outbox gauge."""
    app.include_router(router)
    server.metrics.registry.register(OutboxCollector(server.memchat.outbox.depth))
