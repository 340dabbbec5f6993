"""The turn deadline (``MEMCHAT_TURN_TIMEOUT``): one monotonic instant that bounds a whole turn.

The server starts the clock when a request arrives (:func:`started`); :class:`memchat.chat.MemChat` starts it
itself when nobody did. The lock wait, the LLM call (retries included: each call gets only the time left)
and the checkpoint all count. A turn that ends past its deadline is rolled back and raises
:class:`TurnTimeout`, so a client told 504 never finds the turn in the thread later.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("memchat_turn_deadline", default=None)


class TurnTimeout(TimeoutError):
    """The turn did not finish within ``MEMCHAT_TURN_TIMEOUT``; nothing of it was kept."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the turn did not finish within {seconds:g}s (MEMCHAT_TURN_TIMEOUT); "
                         "nothing was saved, the thread is unchanged")
        self.seconds = seconds


def current() -> float | None:
    """The running turn's deadline (``time.monotonic()`` seconds), if any."""
    return _deadline.get()


def remaining() -> float | None:
    """Seconds left before the deadline (never below 0), or ``None`` without one."""
    d = _deadline.get()
    return None if d is None else max(0.0, d - time.monotonic())


@contextlib.contextmanager
def started(seconds: float) -> Iterator[float | None]:
    """Run the block under a deadline ``seconds`` from now (``0`` = none; an outer deadline is kept when
    it is sooner)."""
    outer = _deadline.get()
    mine = time.monotonic() + seconds if seconds > 0 else None
    d = min((x for x in (outer, mine) if x is not None), default=None)
    token = _deadline.set(d)
    try:
        yield d
    finally:
        try:
            _deadline.reset(token)
        except ValueError:  # a generator closed from another context (garbage collected elsewhere)
            _deadline.set(outer)
