"""Faults of what a request depends on, answered plainly: a turn past its deadline is a 504
``turn_timeout``; an unreachable checkpoint database a 503 ``checkpoint_unavailable``; an unreachable vector
store a 503 ``vector_store_unavailable`` (both with ``Retry-After``), never a 500."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncGenerator
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import Response

from memchat.backends.deadline import TurnTimeout
from memchat.backends.persistence import PersistenceError, ThreadBusy
from memchat.server.schemas import APIError

T = TypeVar("T")
RETRY_AFTER = "5"
GRACE = 0.5  # seconds the server waits past the deadline for the turn's own TurnTimeout (it rolls back first)
_VECTOR_MODULES = ("chromadb", "pymilvus", "milvus_lite", "httpx", "httpcore")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 8:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _is_checkpoint_fault(exc: BaseException) -> bool:
    if isinstance(exc, ThreadBusy):
        return False
    if isinstance(exc, (PersistenceError, sqlite3.OperationalError)):
        return True
    mod = type(exc).__module__ or ""
    return mod.startswith(("psycopg", "psycopg_pool")) and type(exc).__name__ in (
        "OperationalError", "PoolTimeout", "PoolClosed", "InterfaceError", "ConnectionTimeout")


def _is_vector_fault(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    return mod.startswith(_VECTOR_MODULES) or isinstance(exc, ConnectionError)


def classify(exc: BaseException) -> APIError | None:
    """The API error for a deadline or store fault anywhere in ``exc``'s chain; ``None`` for anything else."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, TurnTimeout):
            return APIError(504, str(e), type="server_error", code="turn_timeout")
    for e in chain:
        if _is_checkpoint_fault(e):
            return APIError(503, f"the checkpoint database is unavailable ({type(e).__name__}); nothing was "
                            "saved, try again", type="server_error", code="checkpoint_unavailable",
                            headers={"Retry-After": RETRY_AFTER})
    for e in chain:
        if _is_vector_fault(e):
            return APIError(503, f"the vector store is unavailable ({type(e).__name__}); try again",
                            type="server_error", code="vector_store_unavailable",
                            headers={"Retry-After": RETRY_AFTER})
    return None


def install(app: FastAPI) -> None:
    """Answer store faults and deadlines raised by any route with their clear status (not a 500)."""

    async def handler(request: Request, exc: Exception) -> Response:
        err = classify(exc)
        if err is None:  # ThreadBusy (a PersistenceError)
            err = APIError(409, f"{exc}; try again", code="thread_busy")
        return err.response()

    for kind in (TurnTimeout, PersistenceError, sqlite3.OperationalError, ConnectionError, *_optional_types()):
        app.add_exception_handler(kind, handler)


def _optional_types() -> list[type[Exception]]:
    out: list[type[Exception]] = []
    try:
        import psycopg
        import psycopg_pool

        out += [psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout]
    except ImportError:  # pragma: no cover - SQLite-only installs
        pass
    try:
        import httpx

        out += [httpx.TransportError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import chromadb.errors

        out += [chromadb.errors.ChromaError]
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return out


async def bounded(items: AsyncGenerator[T, None], until: float | None, seconds: float) -> AsyncGenerator[T, None]:
    """``items``, cut at ``until`` (+ a short grace) with :class:`TurnTimeout`; the turn behind it finishes
    in the background and rolls itself back."""
    try:
        while True:
            if until is None:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
            else:
                left = until + GRACE - time.monotonic()
                try:
                    item = await asyncio.wait_for(anext(items), max(0.0, left))
                except StopAsyncIteration:
                    return
                except TurnTimeout:
                    raise
                except TimeoutError as exc:
                    raise TurnTimeout(seconds) from exc
            yield item
    finally:
        await items.aclose()


