"""Error mapping: exceptions of a turn to OpenAI-shaped API errors, and the app's exception handlers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from memchat.backends.llm import (
    BackendBusy,
    BackendError,
    BackendRejected,
    BackendTimeout,
    classify_error,
)
from memchat.backends.local_server import LLMStartupError
from memchat.backends.observability import request_id_var
from memchat.backends.persistence import ThreadBusy
from memchat.memory.receipts import IdempotencyConflict
from memchat.server import faults
from memchat.server.schemas import (
    APIError,
    GraphInputError,
    internal_error,
)

log = logging.getLogger("memchat.server")
turn_log = logging.getLogger("memchat.turn")


def api_error(exc: BaseException, thread_id: str | None = None) -> APIError:
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
    mapped = faults.classify(exc)  # turn deadline (504), store outages (503)
    if mapped is not None:
        return mapped
    log.error("request failed", exc_info=exc)
    return internal_error(request_id_var.get())


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI-shaped errors under ``/v1``; FastAPI's own elsewhere."""

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
        return api_error(exc, thread).response()
