"""Throwaway backing services for tests: a PostgreSQL cluster and a Chroma server on loopback.

Each is started at most once per test process, in a temp directory, on a free port, and stopped at
session end (and by ``atexit``; the server also gets SIGTERM if the test process dies, via
``PR_SET_PDEATHSIG``). Use the fixtures:

* ``postgres_server`` (session) -> :class:`PostgresServer`; ``pg_url`` -> a URL of a fresh database.
* ``chroma_server`` (session) -> :class:`ChromaServer` with ``url`` ``http://127.0.0.1:PORT``.

PostgreSQL comes from Debian's ``postgresql`` package (``scripts/setup.sh --system``); as root it runs
as the ``postgres`` user. Set ``MEMCHAT_TEST_PG_URL`` to use an existing server instead. When a
service is not installed its tests are skipped, or fail under CI (``CI=true``).

Load it with ``pytest_plugins = ["tests.support.services"]`` (one fixture instance per session).
PYTEST_DONT_REWRITE (imported by test modules before pytest loads it as a plugin)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
_lock = threading.Lock()
_running: dict[str, Any] = {}


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies (Linux), so no server outlives it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (under CI) when a service cannot be had."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (run `bash scripts/setup.sh --system`)", pytrace=False)
    pytest.skip(reason)


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes] | None, log: Path | None,
               timeout: float, what: str) -> None:
    """Poll ``ready`` until true; raise with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s:\n{tail(log)}")
        time.sleep(0.1)


def tail(log: Path | None, n: int = 3000) -> str:
    """Last ``n`` characters of a log file."""
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n:]


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal one process we started, wait, and kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


def _shared(name: str, start: Callable[[], Any]) -> Any:
    """Start a service once per process; stop it at exit."""
    with _lock:
        svc = _running.get(name)
        if svc is None:
            svc = start()
            _running[name] = svc
            atexit.register(svc.stop)
        return svc


def _stop_shared(name: str) -> None:
    with _lock:
        svc = _running.pop(name, None)
    if svc is not None:
        svc.stop()


# --------------------------------------------------------------------------- PostgreSQL


def pg_bindir() -> Path | None:
    """Directory with ``initdb`` and ``postgres`` (``MEMCHAT_TEST_PG_BINDIR``, Debian's newest, or PATH)."""
    env = os.environ.get("MEMCHAT_TEST_PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    """A running PostgreSQL (ours or ``MEMCHAT_TEST_PG_URL``); :meth:`new_database` isolates tests."""

    url: str  # admin URL (database "postgres")
    proc: subprocess.Popen[bytes] | None = None
    root: Path | None = None
    log: Path | None = None
    databases: list[str] = field(default_factory=list)

    def url_for(self, dbname: str) -> str:
        """URL of another database on this server."""
        base, _, _ = self.url.rpartition("/")
        return f"{base}/{dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """Create an empty database; return its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`new_database` (kicking out leftover connections)."""
        import psycopg

        name = url.rpartition("/")[2]
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.url, autocommit=True, connect_timeout=10) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Fast shutdown, then remove the cluster directory."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT)  # SIGINT = fast shutdown
            self.proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def start_postgres(timeout: float = START_TIMEOUT) -> PostgresServer:
    """initdb a temp cluster and run it on loopback (unix socket in the temp dir)."""
    external = os.environ.get("MEMCHAT_TEST_PG_URL")
    if external:
        return PostgresServer(url=external)
    bindir = pg_bindir()
    if bindir is None or not (bindir / "initdb").exists() or not (bindir / "postgres").exists():
        raise FileNotFoundError("PostgreSQL server binaries not found (apt-get install postgresql)")
    as_user: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="memchat-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise FileNotFoundError("running as root but there is no 'postgres' user") from exc
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, log = root / "data", root / "postgres.log"
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
                           "-E", "UTF8", "--locale=C.UTF-8"], cwd=root, env=env, capture_output=True,
                          timeout=timeout, **as_user)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between choosing and binding it
        port = free_port()
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=32MB"],
                cwd=root, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent, **as_user)
        server = PostgresServer(url=f"postgresql://postgres@127.0.0.1:{port}/postgres", proc=proc, root=root, log=log)

        def ready(url: str = server.url) -> bool:
            import psycopg

            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True

        try:
            wait_until(ready, proc, log, timeout, "postgres")
            return server
        except RuntimeError as exc:
            last = exc
            stop_process(proc, signal.SIGINT)
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"could not start PostgreSQL: {last}")


# --------------------------------------------------------------------------- Chroma


def chroma_cli() -> Path | None:
    """The ``chroma`` CLI installed with the chromadb package (next to this Python)."""
    cand = Path(sys.executable).parent / "chroma"
    if cand.exists():
        return cand
    found = shutil.which("chroma")
    return Path(found) if found else None


@dataclass
class ChromaServer:
    """A running ``chroma run`` server."""

    url: str
    proc: subprocess.Popen[bytes] | None = None
    root: Path | None = None
    log: Path | None = None

    @property
    def port(self) -> int:
        """Its TCP port."""
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """Stop the server and remove its data."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
            self.proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def start_chroma(timeout: float = START_TIMEOUT) -> ChromaServer:
    """``chroma run --path <tmp> --host 127.0.0.1 --port <free>``, ready when its heartbeat answers."""
    cli = chroma_cli()
    if cli is None:
        raise FileNotFoundError("the chroma CLI is not installed (it comes with the chromadb package)")
    root = Path(tempfile.mkdtemp(prefix="memchat-chroma-"))
    log = root / "chroma.log"
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "CHROMA_TELEMETRY": "False"}
    last: Exception | None = None
    for _ in range(3):
        port = free_port()
        with open(log, "ab") as logf:
            proc = subprocess.Popen([str(cli), "run", "--path", str(root / "data"), "--host", "127.0.0.1",
                                     "--port", str(port)], cwd=root, env=env, stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=_die_with_parent)
        url = f"http://127.0.0.1:{port}"

        def ready(url: str = url) -> bool:
            return httpx.get(f"{url}/api/v2/heartbeat", timeout=2).status_code == 200

        try:
            wait_until(ready, proc, log, timeout, "chroma")
            return ChromaServer(url=url, proc=proc, root=root, log=log)
        except RuntimeError as exc:
            last = exc
            stop_process(proc)
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"could not start a Chroma server: {last}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the whole test session."""
    try:
        server = _shared("postgres", start_postgres)
    except FileNotFoundError as exc:
        unavailable(f"PostgreSQL is not available: {exc}")
    yield server
    _stop_shared("postgres")


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh, empty database (dropped afterwards)."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(scope="session")
def chroma_server() -> Iterator[ChromaServer]:
    """One Chroma server for the whole test session."""
    try:
        server = _shared("chroma", start_chroma)
    except FileNotFoundError as exc:
        unavailable(f"Chroma server is not available: {exc}")
    yield server
    _stop_shared("chroma")


def unique_name(prefix: str = "c") -> str:
    """A collection / thread name unique to one test."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
