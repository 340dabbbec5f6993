"""Routes over users and the thread registry: ``GET /v1/threads``, ``DELETE /v1/users/{user}/memory`` and
``GET /v1/users/{user}/audit``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder

from memchat.backends.persistence import ThreadBusy
from memchat.chat import MemChat
from memchat.server.schemas import APIError, check_id
from memchat.server.tenancy import principal_of, visible_threads


def mount_user_routes(app: FastAPI, server: Any, memchat: MemChat) -> None:
    """Add the routes (``server.call`` runs their store work in the worker pool)."""

    @app.get("/v1/threads", tags=["threads"])
    async def threads(request: Request, user: str | None = None) -> dict[str, Any]:
        """Known threads, most recent first; ``?user=`` lists every thread the user spoke in (all of them,
        also shared threads where someone else spoke last). ``users`` names every speaker. A tenant key
        sees only the threads of its own users."""
        uid = check_id(user, "user") if user is not None else None
        rows = await server.call(visible_threads, memchat, principal_of(request), uid) if user is None or uid else []
        data = [{"id": r["id"], "turns": int(r.get("turns") or 0), "user_id": r.get("user_id"),
                 "users": list(r.get("users") or ([r["user_id"]] if r.get("user_id") else [])),
                 "updated": r.get("updated")} for r in rows]
        return {"object": "list", "data": data}

    @app.delete("/v1/users/{user_id}/memory", tags=["threads"])
    async def user_delete(user_id: str) -> dict[str, Any]:
        """Forget a user everywhere: every thread the user spoke in (a thread shared with other users is
        deleted whole, listed in ``shared_threads_deleted``), every vector memory, the profile slots and the
        audit log. The user's turns are refused (409) while it runs; one already running finishes first and
        is deleted too. The counts say what was removed."""
        uid = check_id(user_id, "user_id") or user_id
        try:
            res = await server.call(memchat.delete_user, uid)
        except ThreadBusy as exc:  # a thread stayed busy: what was deleted stays deleted, a retry finishes
            raise APIError(409, f"{exc}; the forget is incomplete, try again", code="thread_busy") from exc
        return {"user_id": user_id, "object": "user.memory.deleted", "deleted": True,
                "threads_deleted": res["threads_deleted"], "threads_removed": len(res["threads_deleted"]),
                "shared_threads_deleted": res["shared_threads_deleted"],
                "memories_removed": res["memories_removed"],
                "slots_removed": res["profile_slots_removed"] + res["thread_slots_removed"],
                "profile_slots_removed": res["profile_slots_removed"],
                "audit_entries_removed": res["audit_entries_removed"]}

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
        rows = await server.call(memchat.audit, user_id=uid, thread_id=tid)
        return jsonable_encoder({"object": "list", "user_id": uid, "data": rows[-limit:]})
