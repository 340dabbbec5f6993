"""Thread routes: a thread's memory and last prompt, L2 now, forgetting a thread."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.encoders import jsonable_encoder

from memchat.backends.llm import (
    BackendError,
)
from memchat.backends.persistence import ThreadBusy
from memchat.chat import MemChat
from memchat.memory.namespaces import thread_scope
from memchat.server.bridge import Server
from memchat.server.errors import api_error
from memchat.server.schemas import (
    APIError,
    check_id,
)

log = logging.getLogger("memchat.server")
turn_log = logging.getLogger("memchat.turn")


def memory_counts(mc: MemChat, thread_id: str, user_id: str | None) -> dict[str, int] | None:
    """Vector memories of a thread (thread-scoped) and of its user (user-scoped facts); ``None`` when the
    store cannot count them."""
    try:
        return mc.engine.memory.scope_counts(thread_id, user_id)
    except Exception:  # a view must not fail because of a count
        log.debug("memory count failed", exc_info=True)
        return None


def thread_router(server: Server, memchat: MemChat) -> APIRouter:
    """The thread routes of one app."""
    router = APIRouter()

    async def _known(thread_id: str) -> str:
        tid = check_id(thread_id, "thread_id")
        if not tid or not await server.call(memchat.state, tid):
            raise APIError(404, f"thread {thread_id!r} not found", code="thread_not_found")
        return tid

    @router.get("/v1/threads/{thread_id}/memory", tags=["threads"])
    async def thread_memory(thread_id: str) -> Any:
        """Slots with provenance, L1, L2, recent turns and the last retrievals."""
        tid = await _known(thread_id)

        def view() -> dict[str, Any]:
            mem = memchat.memory(tid)
            mem["memories"] = memory_counts(memchat, tid, mem.get("user_id") or thread_scope(tid))
            return mem
        return jsonable_encoder(await server.call(view))

    @router.get("/v1/threads/{thread_id}/context", tags=["threads"])
    async def thread_context(thread_id: str) -> Any:
        """The last prompt sent to the LLM with token counts per section."""
        tid = await _known(thread_id)
        return jsonable_encoder(await server.call(memchat.context, tid))

    @router.post("/v1/threads/{thread_id}/summarize", tags=["threads"])
    async def thread_summarize(thread_id: str) -> Any:
        """Fold L1 (and older verbatim turns) into the L2 summary now; returns the memory."""
        tid = await _known(thread_id)
        await server.require_backend()
        try:
            with server.gate.held(tid):
                return jsonable_encoder(await server.call(memchat.summarize_now, tid))
        except KeyError as exc:
            raise APIError(404, f"thread {thread_id!r} not found", code="thread_not_found") from exc
        except RuntimeError as exc:
            if isinstance(exc, (BackendError, ThreadBusy)):
                raise api_error(exc, thread_id) from exc
            raise APIError(503, str(exc), type="server_error", code="summary_failed") from exc

    @router.delete("/v1/threads/{thread_id}", tags=["threads"])
    async def thread_delete(thread_id: str) -> dict[str, Any]:
        """Forget a thread: checkpoints and thread-scoped memories."""
        tid = check_id(thread_id, "thread_id") or thread_id
        res = await server.call(memchat.delete_thread, tid)
        return {"id": thread_id, "object": "thread.deleted", "deleted": bool(res.get("deleted")),
                "memories_removed": res.get("memories_removed")}

    return router
