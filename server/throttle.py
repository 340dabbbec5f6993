"""Throttling of failed ``POST /login`` attempts per client address.

At most ``limit`` failures (missing or wrong key) within a sliding ``window`` of seconds per address; past
that, every attempt from the address (even with the right key, so guessing gains nothing) is answered 429
with ``Retry-After`` until the oldest failure leaves the window. Kept in memory per process: each replica
counts on its own (N replicas allow N × ``limit``), and a restart forgets. The address is uvicorn's
``client`` (``X-Forwarded-For`` only from the proxies it trusts, ``FORWARDED_ALLOW_IPS``; else behind a
proxy every client shares the proxy's address).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_ADDRESSES = 10_000  # addresses tracked at once (the least recently failing are dropped first)


class LoginThrottle:
    """Sliding-window counter of failed logins per address (thread-safe)."""

    def __init__(self, limit: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may try again (0: now)."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if times is None or len(times) < self.limit:
                return 0
            return max(1, math.ceil(times[-self.limit] + self.window - now))

    def failed(self, address: str) -> None:
        """Count a failed attempt."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now) or deque()
            times.append(now)
            self._failures[address] = times
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """Forget the address's failures after a sign-in."""
        with self._lock:
            self._failures.pop(address, None)
