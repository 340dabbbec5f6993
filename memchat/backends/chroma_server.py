"""A Chroma server (``chroma run``, the chromadb package's CLI) as a managed subprocess on loopback.

``memchat serve --workers N`` starts one over the data directory's embedded store (``<data_dir>/chroma``, the
same files the embedded client opens) when no ``MEMCHAT_CHROMA_URL`` is set, so that its worker processes share
the vectors; ``memchat bench load --workers`` starts one on a scratch directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT = 120.0


class ChromaStartupError(RuntimeError):
    """The Chroma server did not start (no CLI, it exited, or no heartbeat in time)."""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chroma_cli() -> Path:
    """The ``chroma`` script installed next to this Python."""
    cli = Path(sys.executable).parent / "chroma"
    if not cli.exists():
        raise ChromaStartupError(f"the chroma CLI is not installed next to {sys.executable} (it comes with chromadb)")
    return cli


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGINT, then a kill when it does not exit within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def chroma_server(path: Path, timeout: float = START_TIMEOUT) -> Iterator[tuple[str, int]]:
    """``chroma run --path PATH`` on a free loopback port; yields (its URL, its pid); stopped on exit."""
    cli = chroma_cli()
    path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "CHROMA_TELEMETRY": "False"}
    proc = subprocess.Popen([str(cli), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise ChromaStartupError(f"the Chroma server on {path} exited while starting "
                                         f"(code {proc.returncode})")
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ChromaStartupError(f"the Chroma server on {path} did not answer within {timeout:.0f} s")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        stop_process(proc)
