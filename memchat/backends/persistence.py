"""Checkpointer and store by URL: SQLite (default) or PostgreSQL.

``MEMCHAT_CHECKPOINT_URL`` empty = ``<data_dir>/checkpoints.sqlite`` (+ ``store.sqlite``); a path
(or ``sqlite:///path``) = SQLite there; ``postgresql://user:pass@host:5432/db`` = PostgreSQL, shared
by any number of memchat replicas. Schema setup on PostgreSQL is serialized with an advisory lock,
so replicas starting at the same moment do not race on migrations.
"""

from __future__ import annotations

import contextlib
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from memchat.settings import Settings

T = TypeVar("T")

PG_SCHEMES = ("postgres://", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://")
PG_CONNECT_TIMEOUT = 10
PG_POOL_MAX = 8
# Key of the advisory lock that serializes schema setup across replicas ("memchat" in ASCII).
SETUP_LOCK_KEY = 0x6D656D63686174
SETUP_LOCK_TIMEOUT = 300.0
NOT_QUEUED = 2**62  # the sequence number of a lease request that has not queued (yields to every waiter)


class PersistenceError(RuntimeError):
    """The checkpoint database cannot be reached or set up."""


def is_postgres(settings: Settings) -> bool:
    """Whether checkpoints live in PostgreSQL."""
    return settings.checkpoint_url.strip().startswith(PG_SCHEMES)


def postgres_dsn(url: str) -> str:
    """A libpq URL (SQLAlchemy-style ``postgresql+psycopg://`` accepted)."""
    return re.sub(r"^postgresql\+psycopg2?://", "postgresql://", url.strip())


def redact(url: str) -> str:
    """The URL with its password hidden (for messages and logs)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _sqlite_path(settings: Settings, name: str) -> Path:
    url = settings.checkpoint_url.strip()
    if url and not is_postgres(settings):
        p = Path(url.removeprefix("sqlite:///").removeprefix("sqlite://")).expanduser()
        return p if name == "checkpoints" else p.with_name(p.stem + f".{name}.sqlite")
    d = Path(settings.data_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.sqlite"


def _sqlite_conn(path: Path, autocommit: bool = False) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30,
                           isolation_level=None if autocommit else "DEFERRED")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _pg_check(dsn: str) -> None:
    """Connect once so that a wrong host, database or password gives libpq's own message."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=PG_CONNECT_TIMEOUT, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        msg = str(exc).strip().replace(dsn, redact(dsn))
        raise PersistenceError(f"cannot connect to PostgreSQL at {redact(dsn)} (MEMCHAT_CHECKPOINT_URL): {msg}") from exc


def _pg_pool(settings: Settings, name: str) -> Any:
    """An open connection pool (autocommit, dict rows, checked on checkout)."""
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool, PoolTimeout

    dsn = postgres_dsn(settings.checkpoint_url)
    _pg_check(dsn)
    pool = ConnectionPool(
        dsn, min_size=1, max_size=PG_POOL_MAX, open=False, name=f"memchat-{name}",
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row,
                "connect_timeout": PG_CONNECT_TIMEOUT},
        check=ConnectionPool.check_connection,
        timeout=settings.store_timeout,  # a dead database is a 503 within seconds, not after psycopg's 30 s
    )
    try:
        pool.open(wait=True, timeout=PG_CONNECT_TIMEOUT * 2)
    except PoolTimeout as exc:
        pool.close()
        raise PersistenceError(f"cannot open a connection pool to PostgreSQL at {redact(dsn)}: {exc}") from exc
    return pool


def _locked_setup(pool: Any, setup: Callable[[], None], timeout: float = SETUP_LOCK_TIMEOUT) -> None:
    """Run a schema setup under a session advisory lock (one replica migrates at a time).

    The lock is polled with ``pg_try_advisory_lock``: a session blocked inside ``pg_advisory_lock``
    holds a snapshot, which the ``CREATE INDEX CONCURRENTLY`` of a migration would wait for forever.
    """
    with pool.connection() as conn:
        deadline = time.monotonic() + timeout
        while not conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (SETUP_LOCK_KEY,)).fetchone()["ok"]:
            if time.monotonic() > deadline:
                raise PersistenceError(f"another memchat has held the schema-setup lock for over {timeout:.0f}s")
            time.sleep(0.05 + random.random() * 0.1)
        try:
            setup()
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))


def _pg_backed(settings: Settings, name: str, make: Callable[[Any], T]) -> T:
    """A PostgreSQL-backed object on its own pool, its schema set up under the migration lock."""
    pool = _pg_pool(settings, name)
    obj = make(pool)
    try:
        _locked_setup(pool, obj.setup)  # type: ignore[attr-defined]
    except Exception:
        pool.close()
        raise
    return obj


def make_checkpointer(settings: Settings) -> BaseCheckpointSaver[Any]:
    """``SqliteSaver`` at ``<data dir>/checkpoints.sqlite`` or ``PostgresSaver`` for a postgres URL."""
    if is_postgres(settings):
        from langgraph.checkpoint.postgres import PostgresSaver

        return _pg_backed(settings, "checkpoints", PostgresSaver)
    from langgraph.checkpoint.sqlite import SqliteSaver

    saver_s = SqliteSaver(_sqlite_conn(_sqlite_path(settings, "checkpoints")))
    saver_s.setup()
    return saver_s


def make_store(settings: Settings) -> BaseStore:
    """Key-value store for user profiles and the slot audit log (SQLite or PostgreSQL)."""
    if is_postgres(settings):
        from langgraph.store.postgres import PostgresStore

        return _pg_backed(settings, "store", PostgresStore)
    from langgraph.store.sqlite import SqliteStore

    store_s = SqliteStore(_sqlite_conn(_sqlite_path(settings, "store"), autocommit=True))
    store_s.setup()
    return store_s


def close(obj: Any) -> None:
    """Close the connection pool or SQLite connection behind a checkpointer or store (idempotent)."""
    conn = getattr(obj, "conn", None)
    if conn is None:
        return
    if isinstance(conn, sqlite3.Connection):
        conn.close()
        return
    closer = getattr(conn, "close", None)
    if callable(closer):
        closer()


# ---------------------------------------------------------------------------------------------
# one turn at a time per thread, across processes


class ThreadBusy(PersistenceError):
    """Another process (replica) kept the thread busy for longer than the wait allowed."""


class ThreadLeases:
    """Cross-process mutual exclusion per thread, so that replicas never run two turns of one thread at once.

    PostgreSQL: a lease row per busy thread (``memchat_thread_leases``), taken with one short statement,
    renewed in the background while held (a heartbeat every ``ttl / 3``), released at the end; a replica that
    dies leaves a lease that expires after ``ttl`` seconds (``MEMCHAT_LEASE_TTL``, 6 s). Waiters are served in
    arrival order across replicas: each waiter has a row in ``memchat_thread_waiters`` (a sequence number,
    refreshed while it polls) and takes the lease only when no older live waiter is queued for the thread.
    No connection is held during the turn. SQLite: ``flock`` on a lock
    file (4096 stripes) next to the database, for processes on one host.

    Use ``with leases.hold(thread_id): ...`` around a turn (inside the in-process per-thread lock).
    """

    TABLE = "memchat_thread_leases"
    WAITERS = "memchat_thread_waiters"
    STRIPES = 4096

    def __init__(self, settings: Settings, ttl: float | None = None, wait: float | None = None) -> None:
        import uuid

        self.ttl = float(ttl if ttl is not None else settings.lease_ttl)
        self.wait = float(wait if wait is not None else max(120.0, 3 * settings.llm_timeout *
                                                           (settings.llm_max_retries + 1)))
        self.owner = uuid.uuid4().hex
        self._pool: Any = None
        self._dir: Path | None = None
        self._held: dict[str, str] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        if is_postgres(settings):
            self._pool = _pg_pool(settings, "leases")
            _locked_setup(self._pool, self._setup)
        else:
            self._dir = _sqlite_path(settings, "checkpoints").parent / "locks"
            self._dir.mkdir(parents=True, exist_ok=True)

    def _setup(self) -> None:
        with self._pool.connection() as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} (thread_id TEXT PRIMARY KEY, "
                         "owner TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.WAITERS} (token TEXT PRIMARY KEY, "
                         "thread_id TEXT NOT NULL, seq BIGSERIAL, seen TIMESTAMPTZ NOT NULL DEFAULT now())")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {self.WAITERS}_thread ON {self.WAITERS} (thread_id, seq)")

    @contextlib.contextmanager
    def hold(self, thread_id: str, wait: float | None = None) -> Iterator[None]:
        """Hold the thread for the block; raises :class:`ThreadBusy` after ``wait`` seconds (default: the
        instance's)."""
        wait = self.wait if wait is None else wait
        if self._pool is None:
            with self._flock(thread_id, wait):
                yield
            return
        token = f"{self.owner}:{threading.get_ident()}:{time.monotonic_ns()}"
        self._acquire(thread_id, token, wait)
        try:
            yield
        finally:
            self._release(thread_id, token)

    # ---- PostgreSQL ---------------------------------------------------------------------------
    def _try(self, thread_id: str, token: str, seq: int = NOT_QUEUED) -> bool:
        """Take the lease when it is free or expired and no waiter older than ``seq`` (any, for a newcomer)
        is still polling for the thread."""
        with self._pool.connection() as conn:
            if seq != NOT_QUEUED:
                conn.execute(f"UPDATE {self.WAITERS} SET seen = now() WHERE token = %s", (token,))
            row = conn.execute(
                f"INSERT INTO {self.TABLE} AS l (thread_id, owner, expires_at) "
                "SELECT %s, %s, now() + make_interval(secs => %s) "
                f"WHERE NOT EXISTS (SELECT 1 FROM {self.WAITERS} w WHERE w.thread_id = %s AND w.seq < %s "
                "AND w.seen > now() - make_interval(secs => %s)) "
                "ON CONFLICT (thread_id) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at "
                "WHERE l.expires_at < now() RETURNING owner",
                (thread_id, token, self.ttl, thread_id, seq, self.ttl)).fetchone()
        return row is not None

    def _queue(self, thread_id: str, token: str) -> int:
        """Queue a waiter for the thread; its sequence number."""
        with self._pool.connection() as conn:
            row = conn.execute(f"INSERT INTO {self.WAITERS} (token, thread_id) VALUES (%s, %s) RETURNING seq",
                               (token, thread_id)).fetchone()
        return int(row["seq"])

    def _dequeue(self, token: str) -> None:
        with contextlib.suppress(Exception), self._pool.connection() as conn:
            conn.execute(f"DELETE FROM {self.WAITERS} WHERE token = %s OR seen < now() - interval '1 hour'",
                         (token,))

    def _acquire(self, thread_id: str, token: str, wait: float) -> None:
        deadline = time.monotonic() + wait
        if not self._try(thread_id, token):  # free and nobody queued: at once
            seq = self._queue(thread_id, token)
            try:
                delay = 0.02
                while not self._try(thread_id, token, seq):
                    if time.monotonic() > deadline:
                        raise ThreadBusy(f"thread {thread_id!r} is busy with another turn (another replica "
                                         f"held it for over {wait:g}s)")
                    time.sleep(delay + random.random() * delay)
                    delay = min(delay * 1.5, 0.25, self.ttl / 4)
            finally:
                self._dequeue(token)
        with self._guard:
            self._held[token] = thread_id
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew_loop, name="memchat-lease-renewer",
                                                 daemon=True)
                self._renewer.start()

    def _release(self, thread_id: str, token: str) -> None:
        with self._guard:
            self._held.pop(token, None)
        with contextlib.suppress(Exception), self._pool.connection() as conn:
            conn.execute(f"DELETE FROM {self.TABLE} WHERE thread_id = %s AND owner = %s", (thread_id, token))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._guard:
                held = list(self._held.items())
            for token, thread_id in held:
                with contextlib.suppress(Exception), self._pool.connection() as conn:
                    conn.execute(f"UPDATE {self.TABLE} SET expires_at = now() + make_interval(secs => %s) "
                                 "WHERE thread_id = %s AND owner = %s", (self.ttl, thread_id, token))

    # ---- SQLite (one host) ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, thread_id: str, wait: float) -> Iterator[None]:
        import fcntl
        import hashlib

        assert self._dir is not None
        stripe = int.from_bytes(hashlib.blake2b(thread_id.encode(), digest_size=4).digest(), "big") % self.STRIPES
        with open(self._dir / f"{stripe:04d}.lock", "a+b") as f:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ThreadBusy(f"thread {thread_id!r} is busy with another turn in another process") from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        """Stop renewing and close the pool."""
        self._stop.set()
        if self._pool is not None:
            self._pool.close()
