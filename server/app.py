"""The memchat HTTP server: OpenAI-compatible chat completions with server-side memory, thread
management, LangServe routes for the graph and the web chat page.

``create_app()`` builds the FastAPI app; ``run()`` serves it with uvicorn (``memchat serve``). Graph work
is synchronous, so every turn runs in a worker thread and streamed tokens cross over through a queue: the
event loop never blocks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI

from memchat.backends.observability import configure_logging, uvicorn_log_config
from memchat.chat import MemChat
from memchat.server import auth, faults, health, tenancy
from memchat.server.bridge import Server, iterate_in_thread
from memchat.server.chat_plan import ChatPlan
from memchat.server.errors import api_error, install_error_handlers
from memchat.server.graph_precheck import GraphPrecheck
from memchat.server.guard import RequestGuardMiddleware, parse_allowed_hosts
from memchat.server.keys import KeyStore
from memchat.server.langserve_routes import mount_graph
from memchat.server.meta_routes import meta_router, mount_page
from memchat.server.middleware import BodySizeMiddleware, RequestContextMiddleware
from memchat.server.openai_routes import openai_router
from memchat.server.thread_routes import thread_router
from memchat.server.throttle import LoginThrottle
from memchat.server.users import mount_user_routes
from memchat.settings import Settings, get_settings

log = logging.getLogger("memchat.server")
turn_log = logging.getLogger("memchat.turn")

__all__ = ["ChatPlan", "Server", "_api_error", "create_app", "iterate_in_thread", "run"]
_api_error = api_error  # the old name


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
        if probe:
            await _warm_up(server, memchat)
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

    install_error_handlers(app)
    faults.install(app)  # store outages: 503 checkpoint_unavailable / vector_store_unavailable
    health.mount(app, server)  # /health, /ready (the LLM backend and each store), the outbox gauge
    app.include_router(meta_router(server, api_key, keys, throttle, revocations))
    app.include_router(openai_router(server, settings))
    mount_user_routes(app, server, memchat)  # GET /v1/threads, DELETE /v1/users/{user}/memory
    app.include_router(thread_router(server, memchat))
    # LangServe: /graph/*
    mount_graph(app, memchat, server.metrics, settings, gate=server.gate, pool=lambda: server.pool)
    mount_page(app)
    return app


async def _warm_up(server: Server, memchat: MemChat, timeout: float = 60.0) -> None:
    """Load the embedder and the stores before taking requests; a failure is logged, the turns then report it."""
    import asyncio

    try:
        await asyncio.wait_for(server.call(memchat.engine.warm_up), timeout)
    except Exception as exc:  # noqa: BLE001 - a store that is down must not keep the server from starting
        log.warning("memory backends not warmed up: %s: %s", type(exc).__name__, exc)


def workers_problem(settings: Settings, workers: int) -> str | None:
    """Why ``workers`` processes cannot share this configuration; None when they can.

    The processes share the checkpoints (SQLite on one host, with ``flock`` thread leases, or PostgreSQL) and
    find each other's vector writes (the scopes' stale check), as replicas do; an embedded Chroma store is put
    behind a Chroma server that ``run`` starts. What they cannot share is a model or a Milvus Lite file."""
    if workers <= 1:
        return None
    if settings.embedded:
        return ("--workers above 1 needs MEMCHAT_LLM_BASE_URL (an LLM server): each worker would start its own "
                "embedded model")
    if settings.vector_store == "milvus" and "://" not in settings.milvus_uri:
        return ("--workers above 1 needs MEMCHAT_MILVUS_URI of a Milvus server: a Milvus Lite file is opened by "
                "one process")
    return None


def run(host: str = "127.0.0.1", port: int = 8000, workers: int = 0) -> None:
    """Serve with uvicorn (``memchat serve``); ``workers`` processes (0 = ``MEMCHAT_WORKERS``) share the port,
    each building its app from the environment. Raises RuntimeError when they cannot share the stores."""
    settings = get_settings()
    workers = workers or settings.workers
    problem = workers_problem(settings, workers)
    if problem:  # before anything is set up (logging included)
        raise RuntimeError(problem)
    fmt = os.environ.get("MEMCHAT_LOG_FORMAT") or "json"
    level = (os.environ.get("MEMCHAT_LOG_LEVEL") or "INFO").upper()
    configure_logging(fmt, level)
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None and not settings.api_keys_file:
        log.warning("serving on %s without MEMCHAT_API_KEY: anyone who can reach the port can read all memory "
                    "(only localhost names and MEMCHAT_ALLOWED_HOSTS are answered)", host)
    options = dict(host=host, port=port, log_level=level.lower(), access_log=False,
                   log_config=uvicorn_log_config(fmt, level), timeout_graceful_shutdown=5)
    if workers <= 1:
        _uvicorn(create_app(settings), options)
        return
    os.environ["MEMCHAT_WORKERS"] = str(workers)  # the workers read their settings from the environment
    with contextlib.ExitStack() as stack:
        if settings.vector_store == "chroma" and not settings.chroma_url:  # the embedded store, behind a server
            from memchat.backends.chroma_server import ChromaStartupError, chroma_server

            try:
                url, _ = stack.enter_context(chroma_server(Path(settings.data_dir) / "chroma"))
            except ChromaStartupError as exc:
                raise RuntimeError(str(exc)) from exc
            os.environ["MEMCHAT_CHROMA_URL"] = url  # the workers read their settings from the environment
            log.info("serving %d workers; the vectors in %s/chroma through a Chroma server at %s", workers,
                     settings.data_dir, url)
        _uvicorn("memchat.server.app:create_app", {**options, "factory": True, "workers": workers})


def _uvicorn(app: object, options: dict[str, object]) -> None:
    import uvicorn

    uvicorn.run(app, **options)  # type: ignore[arg-type]
