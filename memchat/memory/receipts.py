"""Idempotency receipts: the result of a turn sent with an idempotency key, kept in the thread's state.

A receipt is written by the turn itself (in the same checkpoint as the turn), so a turn and its receipt
commit or roll back together, survive a restart and are shared by replicas on one PostgreSQL. Only the
last ``MEMCHAT_IDEMPOTENCY_KEYS`` receipts of a thread are kept. Keys are stored hashed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_KEY_CHARS = 255


class IdempotencyConflict(ValueError):
    """The idempotency key was already used on this thread for a different request."""


def key_hash(key: str) -> str:
    """The stored form of a client's key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def fingerprint(**request: Any) -> str:
    """A digest of what a request asks for (user, message, persona, generation parameters)."""
    blob = json.dumps(request, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def find_receipt(receipts: list[dict[str, Any]] | None, key: str, fp: str) -> dict[str, Any] | None:
    """The stored result for ``key`` (hashed), ``None`` when unknown; raises :class:`IdempotencyConflict`
    when the key was used for a different request."""
    h = key_hash(key)
    for rec in reversed(receipts or []):
        if rec.get("key") == h:
            if rec.get("fingerprint") != fp:
                raise IdempotencyConflict("this Idempotency-Key was already used on this thread for a different "
                                          "request; use a new key for a new request")
            return rec
    return None


def add_receipt(receipts: list[dict[str, Any]], receipt: dict[str, Any], keep: int) -> list[dict[str, Any]]:
    """The receipts with ``receipt`` appended (replacing one with the same key), the last ``keep`` kept."""
    out = [r for r in receipts if r.get("key") != receipt.get("key")] + [dict(receipt)]
    return out[-max(1, keep):]
