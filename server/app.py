"""The memchat HTTP server: OpenAI-compatible chat completions with server-side memory, thread
management, LangServe routes for the graph and the web chat page.

``create_app()`` builds the FastAPI app; ``run()`` serves it with uvicorn (``memchat serve``). Graph work
is synchronous, so every turn runs in a worker thread and streamed tokens cross over through a queue: the
event loop never blocks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from graph.chat import MemChat, TurnResult
from graph.llm import BackendError, BackendInfo, BackendTimeout, classify_error, probe_backend
from graph.local_server import LLMStartupError
from graph.settings import Settings, get_settings
from server.schemas import (
    SYSTEM_ROLES,
    APIError,
    ChatCompletionRequest,
    check_id,
    chunk_body,
    completion_body,
    message_text,
    new_completion_id,
    usage_block,
)
from server.stateless import StatelessResult, build_prompt, stream_answer

log = logging.getLogger("memchat.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"
REPROBE_SECONDS = 5.0
MODEL_ID = "memchat"
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# middleware


def _is_public(method: str, path: str) -> bool:
    """Routes served without the API key: the health check and the static page shell (no data in it;
    the page asks for the key and sends it with every API call)."""
    if method not in ("GET", "HEAD"):
        return False
    return path in ("/health", "/") or path.startswith("/static/")


class BearerAuthMiddleware:
    """``Authorization: Bearer <MEMCHAT_API_KEY>`` on every route but the public ones (401 otherwise).

    An ASGI middleware, so it also covers the LangServe routes and mounted apps."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_public(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key):
            await self.app(scope, receive, send)
            return
        msg = ("Missing API key: send 'Authorization: Bearer <key>'" if not token else "Invalid API key")
        err = APIError(401, msg, code="invalid_api_key")
        await err.response(headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


class BodySizeMiddleware:
    """413 for a request whose declared body is far larger than any accepted message could need."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length")
            if length and length.isdigit() and int(length) > self.max_bytes:
                err = APIError(413, f"request body of {length} bytes exceeds the limit of {self.max_bytes} bytes",
                               code="request_too_large")
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="memchat-worker")
        self._probe_lock = asyncio.Lock()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run sync work in the worker pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

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


def _api_error(exc: BaseException, thread_id: str | None = None) -> APIError:
    """Map an exception from a turn (or a stateless call) to an OpenAI-shaped API error."""
    if isinstance(exc, APIError):
        return exc
    note = " (nothing was saved; the thread is unchanged)" if thread_id else ""
    if isinstance(exc, LLMStartupError):
        return APIError(503, f"embedded LLM could not start: {exc}{note}", type="server_error",
                        code="backend_unavailable")
    if not isinstance(exc, BackendError):
        try:
            import openai
        except ImportError:  # pragma: no cover - a dependency of langchain-openai
            openai = None  # type: ignore[assignment]
        if openai is not None and isinstance(exc, openai.APIError):
            exc = classify_error(exc)
    if isinstance(exc, BackendTimeout):
        return APIError(504, f"{exc}{note}", type="server_error", code="backend_timeout")
    if isinstance(exc, BackendError):
        return APIError(503, f"{exc}{note}", type="server_error", code="backend_unavailable")
    log.exception("request failed", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error", code="internal_error")


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

    loop.run_in_executor(server.pool, work)
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


def plan_chat(req: ChatCompletionRequest, request: Request, settings: Settings) -> ChatPlan:
    """Validate the request (400/413) and split it into persona, history and the new message."""
    if req.n is not None and req.n > 1:
        raise APIError(400, "n > 1 is not supported: memchat produces one reply per turn", param="n")
    if req.tools or req.functions:
        raise APIError(400, "tools / function calling are not supported", param="tools")
    thread_id = check_id(request.headers.get("x-thread-id") or req.thread_id, "thread_id")
    user_id = check_id(req.user or request.headers.get("x-user-id"), "user")
    texts = []
    for i, m in enumerate(req.messages):
        text = message_text(m, i)
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
    history: list[tuple[str, str]] = []
    for role, text in texts[lead:last_user]:
        if role in SYSTEM_ROLES:  # a later system message: part of the persona for this request
            persona = "\n\n".join(p for p in (persona, text) if p)
        else:
            history.append((role, text))
    return ChatPlan(req, thread_id, user_id, persona, message, history, req.llm_params())


@dataclass
class Outcome:
    """How an answer ended: usage, cached tokens, finish reason and memchat details."""

    reply: str
    usage: dict[str, Any]
    finish: str
    extra: dict[str, Any]


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
    return Outcome(item.reply, usage_block(int(prompt), int(completion), item.cached_tokens),
                   _finish_reason(int(completion), plan, mc.settings), extra)


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
    return f"data: {text}\n\n".encode()


async def answer(server: Server, plan: ChatPlan) -> Response:
    """Run the request (stateful turn or stateless call) and answer plainly or as SSE."""
    mc = server.memchat
    extra: dict[str, Any] = {}
    if plan.thread_id:
        tid = plan.thread_id

        def make() -> Iterator[Any]:
            return mc.stream_turn(tid, plan.message, user_id=plan.user_id, persona=plan.persona,
                                  llm_params=plan.llm_params or None)
        cancel = False
    else:
        prompt = await server.call(build_prompt, mc.engine, plan.persona or mc.settings.persona, plan.history,
                                   plan.message)
        extra = prompt.info()

        def make() -> Iterator[Any]:
            return stream_answer(mc.engine, prompt, plan.llm_params)
        cancel = True

    items = iterate_in_thread(server, make, cancel_on_close=cancel)
    headers = {"X-Thread-ID": plan.thread_id} if plan.thread_id else {}
    cid = new_completion_id()
    model = plan.req.model or MODEL_ID
    if not plan.req.stream:
        try:
            async for item in items:
                if not isinstance(item, str):
                    out = _outcome(item, plan, mc, extra)
                    return JSONResponse(jsonable_encoder(completion_body(cid, model, out.reply, out.finish,
                                                                         out.usage, out.extra)), headers=headers)
            raise RuntimeError("the turn ended without a result")
        except Exception as exc:
            raise _api_error(exc, plan.thread_id) from exc
        finally:
            await items.aclose()
    try:  # peek at the first item so that errors before any output keep their HTTP status
        first = await anext(items)
    except Exception as exc:
        await items.aclose()
        raise _api_error(exc, plan.thread_id) from exc
    return StreamingResponse(_stream(first, items, plan, cid, model, extra, mc), media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(first: Any, items: AsyncGenerator[Any, None], plan: ChatPlan, cid: str, model: str,
                  extra: dict[str, Any], mc: MemChat) -> AsyncIterator[bytes]:
    created = int(time.time())
    with_usage = plan.req.include_usage()
    yield _sse(chunk_body(cid, created, model, {"role": "assistant", "content": ""}, with_usage_field=with_usage))
    try:
        item = first
        while True:
            if isinstance(item, str):
                yield _sse(chunk_body(cid, created, model, {"content": item}, with_usage_field=with_usage))
            else:
                out = _outcome(item, plan, mc, extra)
                yield _sse(chunk_body(cid, created, model, {}, out.finish, with_usage_field=with_usage))
                if with_usage:
                    yield _sse(chunk_body(cid, created, model, None, usage=out.usage))
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
            server.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="memchat", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible chat with long-term memory (threads via X-Thread-ID).")
    app.state.server = server
    app.state.memchat = memchat
    app.add_middleware(BodySizeMiddleware, max_bytes=8 * settings.max_request_chars + (1 << 20))
    if settings.api_key is not None and settings.api_key.get_secret_value():  # outermost: checked first
        app.add_middleware(BearerAuthMiddleware, api_key=settings.api_key.get_secret_value())

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
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response(headers=exc.headers)

    # ---- health & models ----
    @app.get("/health", tags=["meta"])
    async def health() -> dict[str, Any]:
        """Liveness and the LLM backend's state (``ok`` or ``degraded``); no auth."""
        status = await server.probe()
        return status.public()

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
        plan = plan_chat(body, request, settings)
        await server.require_backend()
        return await answer(server, plan)

    # ---- threads ----
    async def _known(thread_id: str) -> None:
        if not await server.call(memchat.state, thread_id):
            raise APIError(404, f"thread {thread_id!r} not found", code="thread_not_found")

    @app.get("/v1/threads", tags=["threads"])
    async def threads(user: str | None = None) -> dict[str, Any]:
        """Known threads, most recent first (``?user=`` filters by user)."""
        rows = await server.call(memchat.threads)
        data = [{"id": r["id"], "turns": int(r.get("turns") or 0), "user_id": r.get("user_id"),
                 "updated": r.get("updated")} for r in rows if user is None or r.get("user_id") == user]
        return {"object": "list", "data": data}

    @app.get("/v1/threads/{thread_id}/memory", tags=["threads"])
    async def thread_memory(thread_id: str) -> Any:
        """Slots with provenance, L1, L2, recent turns and the last retrievals."""
        await _known(thread_id)
        return jsonable_encoder(await server.call(memchat.memory, thread_id))

    @app.get("/v1/threads/{thread_id}/context", tags=["threads"])
    async def thread_context(thread_id: str) -> Any:
        """The last prompt sent to the LLM with token counts per section."""
        await _known(thread_id)
        return jsonable_encoder(await server.call(memchat.context, thread_id))

    @app.post("/v1/threads/{thread_id}/summarize", tags=["threads"])
    async def thread_summarize(thread_id: str) -> Any:
        """Fold L1 (and older verbatim turns) into the L2 summary now; returns the memory."""
        await _known(thread_id)
        await server.require_backend()
        try:
            return jsonable_encoder(await server.call(memchat.summarize_now, thread_id))
        except KeyError as exc:
            raise APIError(404, f"thread {thread_id!r} not found", code="thread_not_found") from exc
        except RuntimeError as exc:
            if isinstance(exc, BackendError):
                raise _api_error(exc, thread_id) from exc
            raise APIError(503, str(exc), type="server_error", code="summary_failed") from exc

    @app.delete("/v1/threads/{thread_id}", tags=["threads"])
    async def thread_delete(thread_id: str) -> dict[str, Any]:
        """Forget a thread: checkpoints and thread-scoped memories."""
        res = await server.call(memchat.delete_thread, thread_id)
        return {"id": thread_id, "object": "thread.deleted", "deleted": bool(res.get("deleted")),
                "memories_removed": res.get("memories_removed")}

    @app.delete("/v1/users/{user_id}/memory", tags=["threads"])
    async def user_delete(user_id: str) -> dict[str, Any]:
        """Forget a user everywhere: threads, memories, profile and audit log."""
        res = await server.call(memchat.delete_user, user_id)
        return {"user_id": user_id, "object": "user.memory.deleted", "deleted": True,
                "threads_deleted": res.get("threads_deleted", []), "memories_removed": res.get("memories_removed")}

    # ---- LangServe ----
    from server.langserve_routes import mount_graph

    mount_graph(app, memchat)

    # ---- web page ----
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def run(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve with uvicorn (``memchat serve``)."""
    import uvicorn

    logging.getLogger("memchat").setLevel(logging.INFO)
    settings = get_settings()
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        log.warning("serving on %s without MEMCHAT_API_KEY: anyone who can reach the port can read all memory",
                    host)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)

