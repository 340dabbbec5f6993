"""Per-thread admission and idempotency keys for the routes that run turns.

Turns of one thread run one at a time (``MemChat.exclusive``), so requests on a busy thread wait, and each
waiter holds one of the server's workers. :class:`ThreadGate` admits at most ``1 + MEMCHAT_THREAD_QUEUE``
requests per thread (running or waiting); more are answered 409 ``thread_busy`` at once, before they take a
worker, so a busy thread cannot starve the rest of the server. A waiter that stays queued for
``MEMCHAT_THREAD_WAIT`` seconds also gets 409 ``thread_busy`` (raised by MemChat).

``Idempotency-Key`` (request header) makes a turn safe to retry: see :mod:`memchat.memory.receipts`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

from starlette.datastructures import Headers

from memchat.memory.receipts import MAX_KEY_CHARS
from memchat.server.schemas import APIError

T = TypeVar("T")
IDEMPOTENCY_HEADER = "idempotency-key"


def thread_busy(thread_id: str, queued: int) -> APIError:
    """The 409 for a request beyond a thread's queue."""
    return APIError(409, f"thread {thread_id!r} is busy: {queued} requests are already running or waiting for it "
                         "(MEMCHAT_THREAD_QUEUE); try again when they finish", code="thread_busy")


class ThreadGate:
    """Counts the requests inside the server per thread (thread-safe: released from worker threads)."""

    def __init__(self, queue: int) -> None:
        self.limit = 1 + max(0, int(queue))
        self._inside: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, thread_id: str) -> None:
        """Admit a request of the thread, or raise the 409 ``thread_busy`` :class:`APIError`."""
        with self._lock:
            n = self._inside.get(thread_id, 0)
            if n >= self.limit:
                raise thread_busy(thread_id, n)
            self._inside[thread_id] = n + 1

    def leave(self, thread_id: str) -> None:
        """A request of the thread is done."""
        with self._lock:
            n = self._inside.get(thread_id, 0) - 1
            if n > 0:
                self._inside[thread_id] = n
            else:
                self._inside.pop(thread_id, None)

    @contextlib.contextmanager
    def held(self, thread_id: str) -> Iterator[None]:
        """``enter`` for the block, ``leave`` after it."""
        self.enter(thread_id)
        try:
            yield
        finally:
            self.leave(thread_id)

    def wrap(self, thread_id: str, items: Iterator[T]) -> Iterator[T]:
        """Iterate ``items`` (already admitted with ``enter``) and ``leave`` when they end, however they end."""
        try:
            yield from items
        finally:
            self.leave(thread_id)

    def inside(self, thread_id: str) -> int:
        """Requests of the thread in the server now."""
        with self._lock:
            return self._inside.get(thread_id, 0)


def idempotency_key(headers: Headers | Any) -> str | None:
    """The ``Idempotency-Key`` header (400 when it is empty, too long or not printable ASCII)."""
    raw = headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise APIError(400, f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
                       param="Idempotency-Key", code="invalid_idempotency_key")
    return key
