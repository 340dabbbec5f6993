"""Checkpointer and store by URL: SQLite (default) or PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from graph.settings import Settings


def _sqlite_path(settings: Settings, name: str) -> Path:
    url = settings.checkpoint_url
    if url and not url.startswith(("postgres://", "postgresql://")):
        p = Path(url.removeprefix("sqlite:///").removeprefix("sqlite://"))
        return p if name == "checkpoints" else p.with_name(p.stem + f".{name}.sqlite")
    d = Path(settings.data_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.sqlite"


def is_postgres(settings: Settings) -> bool:
    """Whether checkpoints live in PostgreSQL."""
    return settings.checkpoint_url.startswith(("postgres://", "postgresql://"))


def _sqlite_conn(path: Path, autocommit: bool = False) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30,
                           isolation_level=None if autocommit else "DEFERRED")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def make_checkpointer(settings: Settings) -> BaseCheckpointSaver[Any]:
    """``SqliteSaver`` at ``<data dir>/checkpoints.sqlite`` or ``PostgresSaver`` for a postgres URL."""
    if is_postgres(settings):
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(settings.checkpoint_url, max_size=8,
                              kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row})
        saver = PostgresSaver(pool)  # type: ignore[arg-type]
        saver.setup()
        return saver
    from langgraph.checkpoint.sqlite import SqliteSaver

    saver_s = SqliteSaver(_sqlite_conn(_sqlite_path(settings, "checkpoints")))
    saver_s.setup()
    return saver_s


def make_store(settings: Settings) -> BaseStore:
    """Key-value store for user profiles and the slot audit log (SQLite or PostgreSQL)."""
    if is_postgres(settings):
        from langgraph.store.postgres import PostgresStore
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(settings.checkpoint_url, max_size=8,
                              kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row})
        store = PostgresStore(pool)  # type: ignore[arg-type]
        store.setup()
        return store
    from langgraph.store.sqlite import SqliteStore

    store_s = SqliteStore(_sqlite_conn(_sqlite_path(settings, "store"), autocommit=True))
    store_s.setup()
    return store_s
