"""Test helpers for the memchat server: serve an app with uvicorn on a free loopback port in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from tests.support.sglang_stub import DEFAULT_MODEL, StubURL, run_stub

STUB_MODEL = DEFAULT_MODEL

__all__ = ["STUB_MODEL", "StubURL", "run_stub", "serve_app", "serve_memchat", "free_port"]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_app(app: Any, timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` (lifespan on) on a free loopback port; yield ``http://127.0.0.1:PORT``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"memchat-server:{port}")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("memchat server failed to start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        with contextlib.suppress(OSError):
            sock.close()


@contextlib.contextmanager
def serve_memchat(stub: str, data_dir: Path, **overrides: Any) -> Iterator[str]:
    """A memchat server over the stub LLM with its own data dir; ``overrides`` are Settings fields."""
    from memchat.chat import MemChat
    from memchat.server.app import create_app
    from memchat.settings import Settings

    overrides.setdefault("llm_extraction", "false")  # no second call per turn unless a test asks for it
    settings = Settings(llm_base_url=stub, llm_model=STUB_MODEL, data_dir=data_dir, _env_file=None,  # type: ignore[call-arg]
                        **overrides)
    with serve_app(create_app(settings, MemChat(settings))) as url:
        yield url
