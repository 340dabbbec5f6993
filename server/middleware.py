"""ASGI middlewares of the memchat server: request context (request id, access log, HTTP metrics) and
request body limits."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memchat.backends.observability import clean_request_id, request_id_var
from memchat.server.metrics import ServerMetrics
from memchat.server.schemas import APIError, internal_error

access_log = logging.getLogger("memchat.access")
log = logging.getLogger("memchat.server")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestContextMiddleware:
    """Outermost: gives every request an id (the client's ``X-Request-ID`` when well-formed, else a new
    one), echoes it in the response's ``X-Request-ID``, counts and times the request, and writes one
    access-log line at INFO (method, path, status, duration, thread id; never bodies). An exception that
    escapes the app becomes an OpenAI-shaped 500 that carries the request id too."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid = clean_request_id(headers.get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        t0 = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                out = MutableHeaders(scope=message)
                out["x-request-id"] = rid
                if "x-content-type-options" not in out:
                    out["x-content-type-options"] = "nosniff"
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error")
            if status:  # the response had started: nothing more can be sent
                raise
            await internal_error(rid).response()(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            self.metrics.http.labels(method, str(status or 500)).inc()
            self.metrics.http_latency.observe(elapsed)
            fields: dict[str, Any] = {"method": method, "path": scope["path"][:300], "status": status or 500,
                                      "duration_ms": round(elapsed * 1000, 1)}
            tid = headers.get("x-thread-id")
            if tid:
                fields["thread_id"] = tid[:256]
            access_log.info("%s %s %s %.1fms", method, fields["path"], fields["status"], fields["duration_ms"],
                            extra=fields)
            request_id_var.reset(token)


class BodyTooLarge(StarletteHTTPException):
    """A request body over the limit (also for bodies without Content-Length, counted as they arrive)."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"of {declared} bytes " if declared is not None else ""
        super().__init__(413, f"request body {size}exceeds the limit of {limit} bytes")


class BodySizeMiddleware:
    """413 for a request body larger than ``max_bytes``: refused before reading when Content-Length says
    so, and cut off while reading otherwise (chunked uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length and length.isascii() and length.isdigit() and int(length) > self.max_bytes:
            exc = BodyTooLarge(self.max_bytes, int(length))
            await APIError(413, str(exc.detail), code="request_too_large").response()(scope, receive, send)
            return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except BodyTooLarge as exc:
            if started:
                raise
            await APIError(413, str(exc.detail), code="request_too_large").response()(scope, receive, send)
