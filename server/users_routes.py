"""Per-user routes: the slot audit log (``GET /v1/users/{user}/audit``).

Mounted by ``create_app`` behind the same auth middleware as every other ``/v1`` route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Query
from fastapi.encoders import jsonable_encoder

from graph.chat import MemChat
from server.schemas import APIError, check_id

Call = Callable[..., Awaitable[Any]]


def mount_users(app: FastAPI, memchat: MemChat, call: Call) -> None:
    """Add the per-user routes; ``call`` runs a blocking function off the event loop."""

    @app.get("/v1/users/{user_id}/audit", tags=["threads"])
    async def user_audit(user_id: str, thread: str | None = None,
                         limit: int = Query(500, ge=1, le=10000)) -> Any:
        """The user's slot history across threads, oldest first: each change with its action (set,
        corrected, retracted, completed, forgotten, expired, rejected), old and new value, thread, turn,
        time and the user's words that caused it (``why``). ``?thread=`` filters by thread."""
        uid = check_id(user_id, "user_id")
        if not uid:
            raise APIError(400, "invalid user_id", param="user_id")
        tid = check_id(thread, "thread") if thread else None
        rows = await call(memchat.audit, user_id=uid, thread_id=tid)
        return jsonable_encoder({"object": "list", "user_id": uid, "data": rows[-limit:]})
