"""Micro-batching of embedding calls (and vector-store writes) across concurrent turns.

Under load many turns want the embedder at once (each its query, then its message and reply). The model
runs one ``encode`` at a time anyway; instead of queueing the callers one by one, the caller that finds the
embedder free becomes the leader and encodes its own texts plus every request queued meanwhile, in one call,
then hands each caller its vectors. The wait is bounded by one encode (no timer): a lone caller encodes at
once, and callers that arrive while a batch runs go together into the next one (up to ``max_texts``).
The Chroma store batches its upserts the same way (one call per item in, one result per item out).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class _Request:
    texts: list[Any]
    result: list[Any] | None = None
    error: BaseException | None = None
    done: bool = False


class MicroBatcher:
    """Merge concurrent ``encode(texts)`` calls into one call of ``encode`` (which returns one vector per text)."""

    def __init__(self, encode: Callable[[list[Any]], Sequence[Any]], max_texts: int = 128) -> None:
        self._encode = encode
        self.max_texts = max_texts
        self._pending: list[_Request] = []
        self._busy = False
        self._cv = threading.Condition()
        self.batches = 0  # encode calls made
        self.requests = 0  # requests served

    def __call__(self, texts: list[Any]) -> list[Any]:
        """The vectors of ``texts``, encoded alone or together with other callers' texts."""
        if not texts:
            return []
        req = _Request(list(texts))
        with self._cv:
            self._pending.append(req)
            while not req.done and self._busy:
                self._cv.wait()
            if not req.done:
                self._busy = True
        if not req.done:
            self._lead()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _lead(self) -> None:
        with self._cv:
            batch: list[_Request] = []
            n = 0
            while self._pending and (not batch or n + len(self._pending[0].texts) <= self.max_texts):
                r = self._pending.pop(0)
                batch.append(r)
                n += len(r.texts)
        try:
            vecs = list(self._encode([t for r in batch for t in r.texts]))
            i = 0
            for r in batch:
                r.result = vecs[i:i + len(r.texts)]
                i += len(r.texts)
        except BaseException as exc:  # every caller of the batch gets the failure
            for r in batch:
                r.error = exc
        finally:
            with self._cv:
                for r in batch:
                    r.done = True
                self.batches += 1
                self.requests += len(batch)
                self._busy = False
                self._cv.notify_all()
