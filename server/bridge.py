"""Per-app server state (the MemChat, the worker pool, the backend status) and the thread → asyncio bridge:
graph work is synchronous, so it runs in a worker thread and its items cross over through a queue."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from memchat.backends.llm import (
    BackendError,
    BackendInfo,
    probe_backend,
)
from memchat.backends.local_server import LLMStartupError
from memchat.chat import MemChat
from memchat.server.admission import ThreadGate
from memchat.server.metrics import ServerMetrics
from memchat.server.schemas import (
    APIError,
)
from memchat.settings import Settings

log = logging.getLogger("memchat.server")
turn_log = logging.getLogger("memchat.turn")

REPROBE_SECONDS = 5.0
T = TypeVar("T")


@dataclass
class BackendStatus:
    """What the last probe of the LLM backend found."""

    state: str = "starting"  # starting | ok | degraded
    info: BackendInfo | None = None
    error: str | None = None
    checked_at: float = 0.0

    def public(self) -> dict[str, Any]:
        """For ``/health`` (no URL: the route is unauthenticated)."""
        out: dict[str, Any] = {"status": self.state}
        if self.info is not None:
            out["backend"] = {"model": self.info.model, "context_length": self.info.context_length,
                              "kind": self.info.kind}
        if self.error:
            out["error"] = self.error
        return out


class Server:
    """Per-app state: the MemChat, the worker pool and the backend status."""

    def __init__(self, settings: Settings, memchat: MemChat, probe: bool) -> None:
        self.settings = settings
        self.memchat = memchat
        self.probe_enabled = probe
        self.status = BackendStatus(state="starting" if probe else "ok")
        self._pool: ThreadPoolExecutor | None = None
        self._probe_lock = asyncio.Lock()
        self.metrics = ServerMetrics(memchat.engine.metrics, backend_up=lambda: self.status.state == "ok")
        self.gate = ThreadGate(settings.thread_queue)  # requests per thread inside the server

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The worker pool (made again after a shutdown: an app may be started more than once)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="memchat-worker")
        return self._pool

    def close_pool(self) -> None:
        """Stop the workers (running turns finish; queued work is dropped)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run sync work in the worker pool (with this request's context: its id reaches the logs)."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self.pool, lambda: ctx.run(fn, *args, **kwargs))

    async def probe(self, force: bool = False) -> BackendStatus:
        """Probe the backend (at most every few seconds unless forced); never raises."""
        if not self.probe_enabled:
            return self.status
        async with self._probe_lock:
            if not force and self.status.state != "degraded":
                return self.status
            if not force and time.monotonic() - self.status.checked_at < REPROBE_SECONDS:
                return self.status
            try:
                info = await self.call(probe_backend, self.settings)
            except (BackendError, LLMStartupError) as exc:
                if self.status.state != "degraded" or self.status.error != str(exc):
                    log.error("LLM backend unavailable: %s", exc)
                self.status = BackendStatus("degraded", None, str(exc), time.monotonic())
            except Exception as exc:  # a probe must never take the server down
                log.exception("LLM backend probe failed")
                self.status = BackendStatus("degraded", None, f"{type(exc).__name__}: {exc}", time.monotonic())
            else:
                if self.status.state != "ok":
                    log.info("LLM backend: model=%s context_length=%s kind=%s url=%s", info.model,
                             info.context_length, info.kind, info.base_url)
                self.status = BackendStatus("ok", info, None, time.monotonic())
            return self.status

    async def require_backend(self) -> None:
        """503 when the backend is known to be down (re-probed at most every few seconds)."""
        status = await self.probe()
        if status.state == "degraded":
            raise APIError(503, f"LLM backend unavailable: {status.error}", type="server_error",
                           code="backend_unavailable")


_DONE = object()


async def iterate_in_thread(server: Server | Executor | None, make: Callable[[], Iterator[T]], *,
                            cancel_on_close: bool) -> AsyncGenerator[T, None]:
    """Run a sync iterator in the worker pool (the server's, an executor, or the loop's default) and yield its
    items here.

    When the consumer stops early (client gone): with ``cancel_on_close`` the iterator is closed, else it
    runs to completion in the background (a memchat turn always finishes and is saved whole)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (shutdown)
            pass

    def work() -> None:
        it: Iterator[T] | None = None
        try:
            it = make()
            for item in it:
                put("item", item)
                if stop.is_set() and cancel_on_close:
                    break
        except BaseException as exc:
            put("error", exc)
            return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        put("done", _DONE)

    ctx = contextvars.copy_context()
    loop.run_in_executor(server.pool if isinstance(server, Server) else server, ctx.run, work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
