"""The stack a load bench runs against: the SGLang stub LLM and a memchat server, each started here (a
subprocess, or uvicorn in a thread)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from memchat.backends.chroma_server import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "tests" / "support" / "sglang_stub.py"
STUB_MODEL = "Qwen/Qwen2.5-7B-Instruct"
SERVER_PIDS: dict[str, int] = {}  # root URL → pid of a `memchat serve` started here (for its CPU time)



def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k, v in (("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1"), ("ANONYMIZED_TELEMETRY", "False")):
        env.setdefault(k, v)
    return env


@contextlib.contextmanager
def stub_llm(delay: float = 0.0) -> Iterator[str]:
    """The SGLang stub in a subprocess (``delay``: seconds before each call answers); yields its ``/v1`` URL."""
    if not STUB.exists():
        raise SystemExit(f"the stub LLM ({STUB}) needs a source checkout; or pass --url of a running server")
    proc = subprocess.Popen([sys.executable, str(STUB), "--port", "0", "--delay", str(delay)], stdout=subprocess.PIPE,
                            text=True,
                            env=_env(), cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            raise SystemExit(f"the stub LLM did not start (got {line!r})")
        yield f"{line[1]}/v1"
    finally:
        stop_process(proc)


def _wait_healthy(base: str, alive: Callable[[], bool], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise SystemExit("the memchat server exited while starting")
        try:
            if httpx.get(f"{base}/health", timeout=2).json().get("status") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the memchat server at {base} did not become healthy")
        time.sleep(0.2)


@contextlib.contextmanager
def memchat_server(llm_url: str, data_dir: Path, key: str, overrides: dict[str, Any], mode: str = "process",
                   log: Path | None = None, workers: int = 1) -> Iterator[str]:
    """A memchat server on ``llm_url``; yields its root URL. ``mode``: ``process`` (``memchat serve --workers``)
    or ``thread`` (uvicorn in a thread of this process, one worker)."""
    settings: dict[str, Any] = {"llm_base_url": llm_url, "llm_model": STUB_MODEL, "data_dir": str(data_dir),
                                "api_key": key, **overrides}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if mode == "process":
        env = _env()
        env.update({f"MEMCHAT_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()})
        env.setdefault("MEMCHAT_LOG_LEVEL", "WARNING")
        out = log.open("ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen([sys.executable, "-m", "memchat.cli", "serve", "--port", str(port),
                                 "--workers", str(workers)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(base, lambda: proc.poll() is None)
            SERVER_PIDS[base] = proc.pid
            yield base
        finally:
            SERVER_PIDS.pop(base, None)
            stop_process(proc)
            if log and not isinstance(out, int):
                out.close()
        return
    import uvicorn

    from memchat.chat import MemChat
    from memchat.server.app import create_app
    from memchat.settings import Settings

    s = Settings(_env_file=None, **settings)  # type: ignore[call-arg]
    app = create_app(s, MemChat(s))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True, name="memchat-bench-server")
    thread.start()
    try:
        _wait_healthy(base, thread.is_alive)
        yield base
    finally:
        server.should_exit = True
        thread.join(15)

