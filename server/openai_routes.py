"""OpenAI-compatible routes: ``/v1/models`` and ``/v1/chat/completions`` (thread turns, stateless calls with or
without a user's memory), answered as JSON or as server-sent events."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response, StreamingResponse

from memchat.backends import deadline
from memchat.chat import MemChat
from memchat.server import faults, tenancy
from memchat.server.bridge import Server, iterate_in_thread
from memchat.server.chat_plan import ChatPlan, Outcome, outcome, plan_chat
from memchat.server.errors import api_error
from memchat.server.history import IMPORTED_HEADER, prepare_thread, undo_import_on_failure
from memchat.server.metrics import TurnObserver
from memchat.server.schemas import (
    ChatCompletionRequest,
    completion_body,
    new_completion_id,
)
from memchat.server.sse import stream_completion
from memchat.server.stateless import build_prompt, stream_answer
from memchat.server.user_memory import build_user_prompt, stream_and_remember
from memchat.settings import Settings

log = logging.getLogger("memchat.server")
turn_log = logging.getLogger("memchat.turn")

MODEL_ID = "memchat"


def _header_safe(value: str) -> bool:
    """Whether a value can go back in an HTTP header (latin-1; a thread id sent in the body may not)."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


async def observed(items: AsyncGenerator[Any, None], obs: TurnObserver, plan: ChatPlan, mc: MemChat,
                   extra: dict[str, Any]) -> AsyncGenerator[str | Outcome, None]:
    """The turn's items with metrics and logs: reply tokens pass through, the final result becomes an
    :class:`Outcome`, and an exception becomes the :class:`APIError` it will be answered with."""
    try:
        async for item in items:
            if isinstance(item, str):
                obs.token()
                yield item
                continue
            out = outcome(item, plan, mc, extra)
            latency = obs.result(out.usage, out.usage["prompt_tokens_details"]["cached_tokens"])
            turn_log.info("turn answered", extra={
                "mode": obs.mode, "thread_id": plan.thread_id, "turn": out.extra.get("turn"),
                "latency_ms": round(latency * 1000, 1),
                "ttft_ms": round(obs.first * 1000, 1) if obs.first is not None else None,
                "prompt_tokens": out.usage["prompt_tokens"], "completion_tokens": out.usage["completion_tokens"],
                "cached_tokens": out.usage["prompt_tokens_details"]["cached_tokens"],
                "message_chars": len(plan.message), "reply_chars": len(out.reply)})
            turn_log.debug("turn content", extra={"user_message": plan.message, "reply": out.reply})
            yield out
    except Exception as exc:
        err = api_error(exc, plan.thread_id)
        obs.failed(err.code or "error")
        turn_log.warning("turn failed: %s", err.code or "error", extra={
            "mode": obs.mode, "thread_id": plan.thread_id, "status": err.status, "code": err.code})
        raise err from exc
    finally:
        if not obs.done:
            obs.failed("client_closed")
        await items.aclose()


async def answer(server: Server, plan: ChatPlan) -> Response:
    """Run the request (stateful turn or stateless call) and answer plainly or as SSE."""
    obs = server.metrics.turn("thread" if plan.thread_id else "stateless")
    cid, created = new_completion_id(), int(time.time())
    try:
        make, cancel, extra, more = await _source(server, plan, {"id": cid, "created": created})
    except Exception as exc:
        err = api_error(exc, plan.thread_id)
        obs.failed(err.code or "error")
        raise err from exc
    items = observed(faults.bounded(iterate_in_thread(server, make, cancel_on_close=cancel), deadline.current(),
                                    server.settings.turn_timeout), obs, plan, server.memchat, extra)
    headers = {"X-Thread-ID": plan.thread_id} if plan.thread_id and _header_safe(plan.thread_id) else {}
    headers.update(more)
    model = plan.req.model or MODEL_ID
    if not plan.req.stream:
        return await _plain(items, plan, cid, model, created, headers)
    try:  # peek at the first item so that errors before any output keep their HTTP status
        first = await anext(items)
    except StopAsyncIteration as exc:
        await items.aclose()
        raise api_error(RuntimeError("the turn ended without a result"), plan.thread_id) from exc
    except Exception as exc:
        await items.aclose()
        raise api_error(exc, plan.thread_id) from exc
    if isinstance(first, Outcome) and first.receipt:
        cid, created = first.receipt.get("id") or cid, first.receipt.get("created") or created
    return StreamingResponse(stream_completion(first, items, plan, cid, model, created), media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _source(server: Server, plan: ChatPlan, receipt: dict[str, Any]
                  ) -> tuple[Callable[[], Iterator[Any]], bool, dict[str, Any], dict[str, str]]:
    """What answers the request: (the sync iterator to run in a worker, whether a client that leaves may cut
    it, the prompt's figures for a stateless call, headers on what happened to history sent with a thread)."""
    mc = server.memchat
    if plan.thread_id:
        tid = plan.thread_id
        more = await server.call(prepare_thread, mc, plan)  # history sent with a thread: imported / ignored
        server.gate.enter(tid)  # 409 thread_busy at once when the thread's queue is full

        def turn() -> Iterator[Any]:
            it = mc.stream_turn(tid, plan.message, user_id=plan.user_id, persona=plan.persona,
                                llm_params=plan.llm_params or None, idempotency_key=plan.idempotency_key,
                                receipt=receipt, context=plan.context)
            return server.gate.wrap(tid, undo_import_on_failure(mc, tid, it) if IMPORTED_HEADER in more else it)
        return turn, False, {}, more  # a memchat turn always finishes and is saved whole
    persona = plan.persona or mc.settings.persona
    if plan.user_id:  # stateless with a user: that user's long-term memory is used and updated
        uid = plan.user_id
        prompt = await server.call(build_user_prompt, mc, persona, plan.history, plan.message, uid, plan.context)
        return (lambda: stream_and_remember(mc, prompt, plan.llm_params, uid, plan.history, plan.message),
                True, dict(prompt.info(), user=uid), {})
    prompt = await server.call(build_prompt, mc.engine, persona, plan.history, plan.message, context=plan.context)
    return lambda: stream_answer(mc.engine, prompt, plan.llm_params), True, prompt.info(), {}


async def _plain(items: AsyncGenerator[Any, None], plan: ChatPlan, cid: str, model: str, created: int,
                 headers: dict[str, str]) -> Response:
    """The non-streamed answer: one completion body (a replayed keyed turn answers its first id and time)."""
    try:
        async for item in items:
            if isinstance(item, Outcome):
                body = completion_body(cid, model, item.reply, item.finish, item.usage, item.extra)
                body["created"] = created
                if item.receipt:
                    body.update(id=item.receipt.get("id") or cid, created=item.receipt.get("created") or created)
                return JSONResponse(jsonable_encoder(body), headers=headers)
        raise RuntimeError("the turn ended without a result")
    except Exception as exc:
        raise api_error(exc, plan.thread_id) from exc
    finally:
        await items.aclose()


def openai_router(server: Server, settings: Settings) -> APIRouter:
    """The OpenAI routes of one app."""
    router = APIRouter()

    @router.get("/v1/models", tags=["openai"])
    async def models() -> dict[str, Any]:
        """The one model served: memchat (memory around the backend's model)."""
        info = server.status.info
        card = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "memchat",
                "backend_model": info.model if info else None,
                "context_length": info.context_length if info else None}
        return {"object": "list", "data": [card]}

    @router.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI chat completions. With ``X-Thread-ID`` the server keeps the memory (send only the new
        message); without, the memory techniques apply within the messages sent."""
        if not (body.user or request.headers.get("x-user-id")):
            body.user = tenancy.default_user(request)  # a tenant key acts for its first user
        plan = plan_chat(body, request, settings)
        with deadline.started(settings.turn_timeout):  # MEMCHAT_TURN_TIMEOUT: 504 turn_timeout past it
            plan.user_id = await tenancy.chat_scope(request, plan.user_id, plan.thread_id)
            await server.require_backend()
            return await answer(server, plan)

    return router
