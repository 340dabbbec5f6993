"""The memchat HTTP server: OpenAI-compatible chat completions with server-side memory, thread
management, LangServe routes for the graph and the web chat page.

``create_app()`` builds the FastAPI app; ``run()`` serves it with uvicorn (``memchat serve``). Graph work
is synchronous, so every turn runs in a worker thread and streamed tokens cross over through a queue: the
event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from memchat.backends.llm import (
    BackendBusy,
    BackendError,
    BackendInfo,
    BackendRejected,
    BackendTimeout,
    classify_error,
    probe_backend,
)
from memchat.backends.local_server import LLMStartupError
from memchat.backends.observability import configure_logging, request_id_var, uvicorn_log_config
from memchat.backends.persistence import ThreadBusy
from memchat.chat import MemChat, TurnResult
from memchat.memory.namespaces import thread_scope
from memchat.memory.receipts import IdempotencyConflict
from memchat.server import auth, tenancy
from memchat.server import login as login_routes
from memchat.server.admission import ThreadGate, idempotency_key
from memchat.server.guard import RequestGuardMiddleware, parse_allowed_hosts
from memchat.server.history import IMPORTED_HEADER, prepare_thread, request_context, undo_import_on_failure
from memchat.server.keys import KeyStore
from memchat.server.langserve_routes import GraphPrecheck
from memchat.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from memchat.server.metrics import ServerMetrics, TurnObserver
from memchat.server.middleware import BodySizeMiddleware, RequestContextMiddleware
from memchat.server.schemas import (
    SYSTEM_ROLES,
    USER_REQUIRED,
    APIError,
    ChatCompletionRequest,
    GraphInputError,
    check_id,
    check_text,
    chunk_body,
    completion_body,
    internal_error,
    message_text,
    new_completion_id,
    usage_block,
)
from memchat.server.stateless import StatelessResult, build_prompt, stream_answer
from memchat.server.throttle import LoginThrottle
from memchat.server.user_memory import build_user_prompt, stream_and_remember
from memchat.server.users import mount_user_routes
from memchat.settings import Settings, get_settings

log = logging.getLogger("memchat.server")
turn_log = logging.getLogger("memchat.turn")

STATIC_DIR = Path(__file__).resolve().parent / "static"
REPROBE_SECONDS = 5.0
MODEL_ID = "memchat"
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# backend status


@dataclass
class BackendStatus:
    """What the last probe of the LLM backend found."""

    state: str = "starting"  # starting | ok | degraded
    info: BackendInfo | None = None
    error: str | None = None
    checked_at: float = 0.0

    def public(self) -> dict[str, Any]:
        """For ``/health`` (no URL: the route is unauthenticated)."""
        out: dict[str, Any] = {"status": self.state}
        if self.info is not None:
            out["backend"] = {"model": self.info.model, "context_length": self.info.context_length,
                              "kind": self.info.kind}
        if self.error:
            out["error"] = self.error
        return out


class Server:
    """Per-app state: the MemChat, the worker pool and the backend status."""

    def __init__(self, settings: Settings, memchat: MemChat, probe: bool) -> None:
        self.settings = settings
        self.memchat = memchat
        self.probe_enabled = probe
        self.status = BackendStatus(state="starting" if probe else "ok")
        self._pool: ThreadPoolExecutor | None = None
        self._probe_lock = asyncio.Lock()
        self.metrics = ServerMetrics(memchat.engine.metrics, backend_up=lambda: self.status.state == "ok")
        self.gate = ThreadGate(settings.thread_queue)  # requests per thread inside the server

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The worker pool (made again after a shutdown: an app may be started more than once)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="memchat-worker")
        return self._pool

    def close_pool(self) -> None:
        """Stop the workers (running turns finish; queued work is dropped)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run sync work in the worker pool (with this request's context: its id reaches the logs)."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self.pool, lambda: ctx.run(fn, *args, **kwargs))

    async def probe(self, force: bool = False) -> BackendStatus:
        """Probe the backend (at most every few seconds unless forced); never raises."""
        if not self.probe_enabled:
            return self.status
        async with self._probe_lock:
            if not force and self.status.state != "degraded":
                return self.status
            if not force and time.monotonic() - self.status.checked_at < REPROBE_SECONDS:
                return self.status
            try:
                info = await self.call(probe_backend, self.settings)
            except (BackendError, LLMStartupError) as exc:
                if self.status.state != "degraded" or self.status.error != str(exc):
                    log.error("LLM backend unavailable: %s", exc)
                self.status = BackendStatus("degraded", None, str(exc), time.monotonic())
            except Exception as exc:  # a probe must never take the server down
                log.exception("LLM backend probe failed")
                self.status = BackendStatus("degraded", None, f"{type(exc).__name__}: {exc}", time.monotonic())
            else:
                if self.status.state != "ok":
                    log.info("LLM backend: model=%s context_length=%s kind=%s url=%s", info.model,
                             info.context_length, info.kind, info.base_url)
                self.status = BackendStatus("ok", info, None, time.monotonic())
            return self.status

    async def require_backend(self) -> None:
        """503 when the backend is known to be down (re-probed at most every few seconds)."""
        status = await self.probe()
        if status.state == "degraded":
            raise APIError(503, f"LLM backend unavailable: {status.error}", type="server_error",
                           code="backend_unavailable")


def memory_counts(mc: MemChat, thread_id: str, user_id: str | None) -> dict[str, int] | None:
    """Vector memories of a thread (thread-scoped) and of its user (user-scoped facts), when the store
    can count them (Chroma); ``None`` otherwise."""
    col = getattr(mc.engine.memory, "col", None)
    if col is None:
        return None
    try:
        thread: Any = {"$and": [{"thread_id": thread_id}, {"scope": "thread"}]}
        out = {"thread": len(col.get(where=thread, include=[])["ids"]), "user": 0}
        if user_id:
            user: Any = {"$and": [{"user_id": user_id}, {"scope": "user"}]}
            out["user"] = len(col.get(where=user, include=[])["ids"])
        return out
    except Exception:  # a view must not fail because of a count
        log.debug("memory count failed", exc_info=True)
        return None


def _api_error(exc: BaseException, thread_id: str | None = None) -> APIError:
    """Map an exception from a turn (or a stateless call) to an OpenAI-shaped API error."""
    if isinstance(exc, APIError):
        return exc
    note = " (nothing was saved; the thread is unchanged)" if thread_id else ""
    if isinstance(exc, LLMStartupError):
        return APIError(503, f"embedded LLM could not start: {exc}{note}", type="server_error",
                        code="backend_unavailable")
    if isinstance(exc, ThreadBusy):
        return APIError(409, f"{exc}; try again", code="thread_busy")
    if isinstance(exc, IdempotencyConflict):
        return APIError(422, str(exc), param="Idempotency-Key", code="idempotency_key_reused")
    if not isinstance(exc, BackendError):
        try:
            import openai
        except ImportError:  # pragma: no cover - a dependency of langchain-openai
            openai = None  # type: ignore[assignment]
        if openai is not None and isinstance(exc, openai.APIError):
            exc = classify_error(exc)
    if isinstance(exc, BackendTimeout):
        return APIError(504, f"{exc}{note}", type="server_error", code="backend_timeout")
    if isinstance(exc, BackendRejected):  # the client asked for something the backend refuses: not retryable
        return APIError(400, f"{exc}{note}", code="backend_rejected")
    if isinstance(exc, BackendBusy):
        return APIError(503, f"{exc}{note}", type="server_error", code="backend_busy",
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, BackendError):  # unreachable, failing, or refusing our key (401/403): the server's
        return APIError(503, f"{exc}{note}", type="server_error", code="backend_unavailable")
    log.error("request failed", exc_info=exc)
    return internal_error(request_id_var.get())


# ---------------------------------------------------------------------------------------------
# thread → asyncio bridge

_DONE = object()


async def iterate_in_thread(server: Server, make: Callable[[], Iterator[T]], *,
                            cancel_on_close: bool) -> AsyncGenerator[T, None]:
    """Run a sync iterator in the worker pool and yield its items here.

    When the consumer stops early (client gone): with ``cancel_on_close`` the iterator is closed, else it
    runs to completion in the background (a memchat turn always finishes and is saved whole)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (shutdown)
            pass

    def work() -> None:
        it: Iterator[T] | None = None
        try:
            it = make()
            for item in it:
                put("item", item)
                if stop.is_set() and cancel_on_close:
                    break
        except BaseException as exc:
            put("error", exc)
            return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        put("done", _DONE)

    ctx = contextvars.copy_context()
    loop.run_in_executor(server.pool, ctx.run, work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()


# ---------------------------------------------------------------------------------------------
# chat completions


@dataclass
class ChatPlan:
    """A validated chat request: where it goes and what it sends."""

    req: ChatCompletionRequest
    thread_id: str | None
    user_id: str | None
    persona: str | None
    message: str
    history: list[tuple[str, str]]
    llm_params: dict[str, Any]
    idempotency_key: str | None = None  # with a thread: a retry with the same key replays the stored result
    context: str | None = None


def plan_chat(req: ChatCompletionRequest, request: Request, settings: Settings) -> ChatPlan:
    """Validate the request (400/413) and split it into persona, history and the new message."""
    if req.n is not None and req.n > 1:
        raise APIError(400, "n > 1 is not supported: memchat produces one reply per turn", param="n")
    if req.tools or req.functions:
        raise APIError(400, "tools / function calling are not supported", param="tools")
    thread_id = check_id(request.headers.get("x-thread-id") or req.thread_id, "thread_id")
    user_id = check_id(req.user or request.headers.get("x-user-id"), "user")
    if settings.require_user and not user_id:
        raise APIError(400, USER_REQUIRED, param="user", code="user_required")
    check_text(req.model, "model")
    for stop in ([req.stop] if isinstance(req.stop, str) else req.stop or []):
        check_text(stop, "stop")
    texts = []
    for i, m in enumerate(req.messages):
        text = check_text(message_text(m, i), f"messages[{i}].content")
        if len(text) > settings.max_request_chars:
            raise APIError(413, f"messages[{i}] has {len(text)} characters; the limit is "
                                f"{settings.max_request_chars} (MEMCHAT_MAX_REQUEST_CHARS)",
                           param=f"messages.{i}.content", code="message_too_long")
        texts.append((m.role, text))
    last_user = max((i for i, (role, _) in enumerate(texts) if role == "user"), default=-1)
    if last_user < 0:
        raise APIError(400, "messages must contain a user message", param="messages")
    message = texts[last_user][1]
    if not message.strip():
        raise APIError(400, "the last user message is empty", param=f"messages.{last_user}.content")
    lead = 0
    while lead < len(texts) and texts[lead][0] in SYSTEM_ROLES:
        lead += 1
    persona = "\n\n".join(t for _, t in texts[:lead] if t.strip()) or None
    history: list[tuple[str, str]] = [(r, t) for r, t in texts[lead:last_user] if r not in SYSTEM_ROLES]
    context = request_context(req, texts, lead)  # later system messages: this request's tail only
    return ChatPlan(req, thread_id, user_id, persona, message, history, req.llm_params(),
                    idempotency_key=idempotency_key(request.headers), context=context)


@dataclass
class Outcome:
    """How an answer ended: usage, cached tokens, finish reason and memchat details."""

    reply: str
    usage: dict[str, Any]
    finish: str
    extra: dict[str, Any]
    receipt: dict[str, Any] | None = None  # the stored completion id / created of a replayed turn


def _finish_reason(completion_tokens: int, plan: ChatPlan, settings: Settings) -> str:
    cap = plan.llm_params.get("max_tokens") or settings.llm_max_tokens
    return "length" if completion_tokens >= int(cap) else "stop"


def _outcome(item: TurnResult | StatelessResult, plan: ChatPlan, mc: MemChat, extra: dict[str, Any]) -> Outcome:
    usage = item.usage or {}
    prompt = usage.get("input_tokens")
    completion = usage.get("output_tokens")
    if prompt is None:  # the backend reported no usage: count with our tokenizer
        sections = item.context.get("sections", {}) if isinstance(item, TurnResult) else extra.get("sections", {})
        prompt = int(sections.get("total") or 0)
    if completion is None:
        completion = mc.engine.tokenizer.count(item.reply) if item.reply else 0
    if isinstance(item, TurnResult):
        ctx = item.context
        extra = {"thread_id": item.thread_id, "turn": item.turn, "prefix_reuse": ctx.get("prefix_reuse"),
                 "sections": ctx.get("sections"), "dropped_turns": ctx.get("dropped_turns"),
                 "retrieved": len(ctx.get("retrieved_ids") or [])}
    receipt = item.receipt if isinstance(item, TurnResult) and item.replayed else None
    if receipt is not None:
        extra["replayed"] = True
    return Outcome(item.reply, usage_block(int(prompt), int(completion), item.cached_tokens),
                   _finish_reason(int(completion), plan, mc.settings), extra, receipt)


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
    return f"data: {text}\n\n".encode()


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
            out = _outcome(item, plan, mc, extra)
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
        err = _api_error(exc, plan.thread_id)
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
    mc = server.memchat
    extra: dict[str, Any] = {}
    more: dict[str, str] = {}  # what happened to history sent with a thread (imported / ignored)
    obs = server.metrics.turn("thread" if plan.thread_id else "stateless")
    cid, created = new_completion_id(), int(time.time())
    try:
        if plan.thread_id:
            tid = plan.thread_id
            receipt = {"id": cid, "created": created}
            more = await server.call(prepare_thread, mc, plan)
            server.gate.enter(tid)  # 409 thread_busy at once when the thread's queue is full

            def make() -> Iterator[Any]:
                it = mc.stream_turn(tid, plan.message, user_id=plan.user_id, persona=plan.persona,
                                    llm_params=plan.llm_params or None, idempotency_key=plan.idempotency_key,
                                    receipt=receipt, context=plan.context)
                return server.gate.wrap(tid, undo_import_on_failure(mc, tid, it) if IMPORTED_HEADER in more else it)
            cancel = False
        elif plan.user_id:  # stateless with a user: that user's long-term memory is used and updated
            uid = plan.user_id
            prompt = await server.call(build_user_prompt, mc, plan.persona or mc.settings.persona, plan.history,
                                       plan.message, uid, plan.context)
            extra = dict(prompt.info(), user=uid)

            def make() -> Iterator[Any]:
                return stream_and_remember(mc, prompt, plan.llm_params, uid, plan.history, plan.message)
            cancel = True
        else:
            prompt = await server.call(build_prompt, mc.engine, plan.persona or mc.settings.persona,
                                       plan.history, plan.message, context=plan.context)
            extra = prompt.info()

            def make() -> Iterator[Any]:
                return stream_answer(mc.engine, prompt, plan.llm_params)
            cancel = True
    except Exception as exc:
        err = _api_error(exc, plan.thread_id)
        obs.failed(err.code or "error")
        raise err from exc

    items = observed(iterate_in_thread(server, make, cancel_on_close=cancel), obs, plan, mc, extra)
    headers = {"X-Thread-ID": plan.thread_id} if plan.thread_id and _header_safe(plan.thread_id) else {}
    headers.update(more)
    model = plan.req.model or MODEL_ID
    if not plan.req.stream:
        try:
            async for item in items:
                if isinstance(item, Outcome):
                    body = completion_body(cid, model, item.reply, item.finish, item.usage, item.extra)
                    body["created"] = created  # what a replay of a keyed turn answers too
                    if item.receipt:  # a replayed turn: its first answer's id and time
                        body.update(id=item.receipt.get("id") or cid, created=item.receipt.get("created") or created)
                    return JSONResponse(jsonable_encoder(body), headers=headers)
            raise RuntimeError("the turn ended without a result")
        except Exception as exc:
            raise _api_error(exc, plan.thread_id) from exc
        finally:
            await items.aclose()
    try:  # peek at the first item so that errors before any output keep their HTTP status
        first = await anext(items)
    except StopAsyncIteration as exc:
        await items.aclose()
        raise _api_error(RuntimeError("the turn ended without a result"), plan.thread_id) from exc
    except Exception as exc:
        await items.aclose()
        raise _api_error(exc, plan.thread_id) from exc
    if isinstance(first, Outcome) and first.receipt:
        cid, created = first.receipt.get("id") or cid, first.receipt.get("created") or created
    return StreamingResponse(_stream(first, items, plan, cid, model, created), media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(first: str | Outcome, items: AsyncGenerator[str | Outcome, None], plan: ChatPlan, cid: str,
                  model: str, created: int) -> AsyncIterator[bytes]:
    with_usage = plan.req.include_usage()
    yield _sse(chunk_body(cid, created, model, {"role": "assistant", "content": ""}, with_usage_field=with_usage))
    try:
        item = first
        while True:
            if isinstance(item, str):
                yield _sse(chunk_body(cid, created, model, {"content": item}, with_usage_field=with_usage))
            else:
                if item.receipt and item.reply:  # a replayed turn: its stored reply in one piece
                    yield _sse(chunk_body(cid, created, model, {"content": item.reply}, with_usage_field=with_usage))
                yield _sse(chunk_body(cid, created, model, {}, item.finish, with_usage_field=with_usage))
                if with_usage:
                    yield _sse(chunk_body(cid, created, model, None, usage=item.usage))
                break
            item = await anext(items)
    except StopAsyncIteration:
        pass
    except Exception as exc:  # headers are gone: report the error in the stream
        err = _api_error(exc, plan.thread_id)
        yield _sse(err.body())
    finally:
        await items.aclose()
    yield _sse("[DONE]")


# ---------------------------------------------------------------------------------------------
# the app


def create_app(settings: Settings | None = None, memchat: MemChat | None = None, *, probe: bool = True) -> FastAPI:
    """The FastAPI app. ``probe=False`` skips the startup probe of the LLM backend (for injected fakes)."""
    if memchat is None:
        memchat = MemChat(settings or get_settings())
    settings = memchat.settings if settings is None else settings
    server = Server(settings, memchat, probe)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        status = await server.probe(force=True)
        if status.state != "ok" and probe:
            log.warning("starting degraded: chat requests answer 503 until the LLM backend is reachable")
        try:
            yield
        finally:
            server.close_pool()

    app = FastAPI(title="memchat", version="0.1.0", lifespan=lifespan, dependencies=[Depends(tenancy.guard)],
                  description="OpenAI-compatible chat with long-term memory (threads via X-Thread-ID).")
    app.state.server = server
    app.state.memchat = memchat
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    revocations = auth.SessionRevocations(memchat.store)
    keys = KeyStore(settings.api_keys_file) if settings.api_keys_file else None  # tenant keys
    app.state.login_throttle = throttle = LoginThrottle(settings.login_max_failures or 1 << 30)
    # the last added is the outermost: request id and access log, then auth, then the Host / origin /
    # content-type guard, then body limits, then the check of graph inputs (only authenticated requests get
    # that far)
    app.add_middleware(GraphPrecheck, max_chars=settings.max_request_chars, require_user=settings.require_user)
    app.add_middleware(BodySizeMiddleware, max_bytes=8 * settings.max_request_chars + (1 << 20))
    app.add_middleware(RequestGuardMiddleware, allowed_hosts=parse_allowed_hosts(settings.allowed_hosts),
                       keyless=not (api_key or keys))
    if api_key or keys:
        app.add_middleware(auth.AuthMiddleware, api_key=api_key, revocations=revocations, keys=keys)
    app.add_middleware(RequestContextMiddleware, metrics=server.metrics)

    # ---- errors: OpenAI-shaped under /v1 ----
    @app.exception_handler(APIError)
    async def _api_error_handler(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_handler(request: Request, exc: RequestValidationError) -> Response:
        if not request.url.path.startswith("/v1/"):
            return await request_validation_exception_handler(request, exc)
        errs = exc.errors()
        parts = []
        for e in errs[:5]:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        param = ".".join(str(p) for p in errs[0].get("loc", ()) if p != "body") if errs else None
        return APIError(400, "invalid request: " + "; ".join(parts), param=param or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_handler(request: Request, exc: StarletteHTTPException) -> Response:
        if not request.url.path.startswith("/v1/"):
            return await http_exception_handler(request, exc)
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response(headers=exc.headers)

    @app.exception_handler(GraphInputError)
    async def _graph_input_handler(request: Request, exc: GraphInputError) -> Response:
        return APIError(exc.status, exc.message, code=exc.code).response()

    @app.exception_handler(BackendError)
    async def _backend_error_handler(request: Request, exc: BackendError) -> Response:
        thread = request.headers.get("x-thread-id")
        return _api_error(exc, thread).response()

    # ---- health & models ----
    @app.get("/health", tags=["meta"])
    async def health() -> dict[str, Any]:
        """Liveness and the LLM backend's state (``ok`` or ``degraded``); no auth."""
        status = await server.probe()
        return status.public()

    @app.get("/metrics", tags=["meta"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics() -> Response:
        """Prometheus metrics: turns, LLM calls by kind, failures, cached-token ratio, latency histograms."""
        return Response(server.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # ---- sign-in for the web page ----
    @app.post("/login", tags=["meta"], status_code=303,
              responses={200: {"description": "JSON login: the cookie is set"},
                         303: {"description": "Form login: the cookie is set, go to `next`"},
                         401: {"description": "Missing or wrong key"},
                         429: {"description": "Too many failed sign-ins from this address (see Retry-After)"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-www-form-urlencoded": {"schema": {
                      "type": "object", "required": ["key"],
                      "properties": {"key": {"type": "string"}, "next": {"type": "string"}}}},
                  "application/json": {"schema": {
                      "type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}}}}}})
    async def login(request: Request) -> Response:
        """Check the API key (form field or JSON ``key``) and set the HttpOnly session cookie
        ``memchat_key`` (SameSite=Strict) used by the web page."""
        return await login_routes.login(request, api_key or None, keys, throttle)

    @app.post("/logout", tags=["meta"])
    async def logout(request: Request) -> Response:
        """Sign out: revoke the session token of the cookie and drop the cookie."""
        return await login_routes.logout(request, revocations)

    @app.get("/v1/models", tags=["openai"])
    async def models() -> dict[str, Any]:
        """The one model served: memchat (memory around the backend's model)."""
        info = server.status.info
        card = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "memchat",
                "backend_model": info.model if info else None,
                "context_length": info.context_length if info else None}
        return {"object": "list", "data": [card]}

    # ---- chat ----
    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI chat completions. With ``X-Thread-ID`` the server keeps the memory (send only the new
        message); without, the memory techniques apply within the messages sent."""
        if not (body.user or request.headers.get("x-user-id")):
            body.user = tenancy.default_user(request)  # a tenant key acts for its first user
        plan = plan_chat(body, request, settings)
        plan.user_id = await tenancy.chat_scope(request, plan.user_id, plan.thread_id)
        await server.require_backend()
        return await answer(server, plan)

    # ---- threads ----
    async def _known(thread_id: str) -> str:
        tid = check_id(thread_id, "thread_id")
        if not tid or not await server.call(memchat.state, tid):
            raise APIError(404, f"thread {thread_id!r} not found", code="thread_not_found")
        return tid

    mount_user_routes(app, server, memchat)  # GET /v1/threads, DELETE /v1/users/{user}/memory

    @app.get("/v1/threads/{thread_id}/memory", tags=["threads"])
    async def thread_memory(thread_id: str) -> Any:
        """Slots with provenance, L1, L2, recent turns and the last retrievals."""
        tid = await _known(thread_id)

        def view() -> dict[str, Any]:
            mem = memchat.memory(tid)
            mem["memories"] = memory_counts(memchat, tid, mem.get("user_id") or thread_scope(tid))
            return mem
        return jsonable_encoder(await server.call(view))

    @app.get("/v1/threads/{thread_id}/context", tags=["threads"])
    async def thread_context(thread_id: str) -> Any:
        """The last prompt sent to the LLM with token counts per section."""
        tid = await _known(thread_id)
        return jsonable_encoder(await server.call(memchat.context, tid))

    @app.post("/v1/threads/{thread_id}/summarize", tags=["threads"])
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
                raise _api_error(exc, thread_id) from exc
            raise APIError(503, str(exc), type="server_error", code="summary_failed") from exc

    @app.delete("/v1/threads/{thread_id}", tags=["threads"])
    async def thread_delete(thread_id: str) -> dict[str, Any]:
        """Forget a thread: checkpoints and thread-scoped memories."""
        tid = check_id(thread_id, "thread_id") or thread_id
        res = await server.call(memchat.delete_thread, tid)
        return {"id": thread_id, "object": "thread.deleted", "deleted": bool(res.get("deleted")),
                "memories_removed": res.get("memories_removed")}

    # ---- LangServe ----
    from memchat.server.langserve_routes import mount_graph

    mount_graph(app, memchat, server.metrics, settings, gate=server.gate)

    # ---- web page (behind auth: the API key as Bearer, or the session cookie from /login) ----
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html",
                            headers={**auth.PAGE_HEADERS, "Content-Security-Policy": auth.PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def run(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve with uvicorn (``memchat serve``)."""
    import uvicorn

    fmt = os.environ.get("MEMCHAT_LOG_FORMAT") or "json"
    level = (os.environ.get("MEMCHAT_LOG_LEVEL") or "INFO").upper()
    configure_logging(fmt, level)
    settings = get_settings()
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None and not settings.api_keys_file:
        log.warning("serving on %s without MEMCHAT_API_KEY: anyone who can reach the port can read all memory "
                    "(only localhost names and MEMCHAT_ALLOWED_HOSTS are answered)", host)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=level.lower(), access_log=False,
                log_config=uvicorn_log_config(fmt, level), timeout_graceful_shutdown=5)

