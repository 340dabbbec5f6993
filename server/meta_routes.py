"""Meta routes: health, metrics, sign-in for the web page, and the page itself."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from memchat.server import auth
from memchat.server import login as login_routes
from memchat.server.bridge import Server
from memchat.server.keys import KeyStore
from memchat.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from memchat.server.throttle import LoginThrottle

STATIC_DIR = Path(__file__).resolve().parent / "static"


def meta_router(server: Server, api_key: str, keys: KeyStore | None, throttle: LoginThrottle,
                revocations: auth.SessionRevocations) -> APIRouter:
    """``/metrics``, ``/login``, ``/logout`` (``/health`` and ``/ready``: :mod:`memchat.server.health`)."""
    router = APIRouter()

    @router.get("/metrics", tags=["meta"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics() -> Response:
        """Prometheus metrics: turns, LLM calls by kind, failures, cached-token ratio, latency histograms."""
        return Response(server.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @router.post("/login", tags=["meta"], status_code=303,
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

    @router.post("/logout", tags=["meta"])
    async def logout(request: Request) -> Response:
        """Sign out: revoke the session token of the cookie and drop the cookie."""
        return await login_routes.logout(request, revocations)

    return router


def mount_page(app: FastAPI) -> None:
    """The web page (behind auth: the API key as Bearer, or the session cookie from /login) and its files."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html",
                            headers={**auth.PAGE_HEADERS, "Content-Security-Policy": auth.PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
