"""A bounded checkpoint history: keep each thread's last K checkpoints, and measure what a thread holds.

LangGraph keeps every checkpoint of every step; memchat needs only the latest (the thread) and the few
before it (rollback of a failed turn goes to the checkpoint the turn started from, crash recovery walks
back to the last complete one). :func:`prune` deletes a thread's checkpoints older than its newest
``keep`` (and their pending writes; on PostgreSQL also the channel blobs no kept checkpoint references).
Checkpoint ids are time-ordered (uuid6), so "older" is ``checkpoint_id <`` the K-th newest id. Call it
while holding the thread (``MemChat.exclusive``): no other writer appends to the thread meanwhile.
"""

from __future__ import annotations

import contextlib
from typing import Any

PG_PRUNE = (
    "DELETE FROM checkpoint_writes WHERE thread_id = %(t)s AND checkpoint_id < %(c)s",
    "DELETE FROM checkpoints WHERE thread_id = %(t)s AND checkpoint_id < %(c)s",
    "DELETE FROM checkpoint_blobs b WHERE b.thread_id = %(t)s AND NOT EXISTS (SELECT 1 FROM checkpoints c "
    "WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns "
    "AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)",
)
PG_BYTES = (
    "SELECT count(*) AS n, coalesce(sum(pg_column_size(checkpoint) + pg_column_size(metadata)), 0) AS b "
    "FROM checkpoints WHERE thread_id = %s",
    "SELECT count(*) AS n, coalesce(sum(length(blob)), 0) AS b FROM checkpoint_blobs WHERE thread_id = %s",
    "SELECT count(*) AS n, coalesce(sum(length(blob)), 0) AS b FROM checkpoint_writes WHERE thread_id = %s",
)


def _kind(saver: Any) -> str:
    name = type(saver).__name__
    if name == "SqliteSaver":
        return "sqlite"
    if name == "PostgresSaver":
        return "postgres"
    return "other"


def _pg_connection(saver: Any) -> Any:
    conn = saver.conn
    return conn.connection() if hasattr(conn, "connection") else contextlib.nullcontext(conn)


def prune(saver: Any, thread_id: str, keep: int) -> int:
    """Delete the thread's checkpoints older than its newest ``keep`` (0 = keep all); how many were deleted.

    Savers other than SQLite and PostgreSQL (in-memory ones) are left as they are."""
    kind = _kind(saver)
    if keep <= 0 or kind == "other":
        return 0
    if kind == "sqlite":
        with saver.cursor() as cur:  # one transaction
            cur.execute("SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' "
                        "ORDER BY checkpoint_id DESC LIMIT 1 OFFSET ?", (thread_id, keep - 1))
            row = cur.fetchone()
            if row is None:
                return 0
            cur.execute("DELETE FROM writes WHERE thread_id = ? AND checkpoint_id < ?", (thread_id, row[0]))
            cur.execute("DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id < ?", (thread_id, row[0]))
            return int(cur.rowcount or 0)
    with _pg_connection(saver) as conn, conn.transaction():
        row = conn.execute("SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' "
                           "ORDER BY checkpoint_id DESC LIMIT 1 OFFSET %s", (thread_id, keep - 1)).fetchone()
        if row is None:
            return 0
        cutoff = row["checkpoint_id"] if isinstance(row, dict) else row[0]
        deleted = 0
        for i, sql in enumerate(PG_PRUNE):
            cur = conn.execute(sql, {"t": thread_id, "c": cutoff})
            if i == 1:
                deleted = int(cur.rowcount or 0)
        return deleted


def thread_bytes(saver: Any, thread_id: str) -> dict[str, int]:
    """What the thread holds in the checkpointer: ``checkpoints`` (rows) and ``bytes`` (stored payload:
    checkpoints, metadata, channel blobs, pending writes)."""
    kind = _kind(saver)
    if kind == "sqlite":
        with saver.cursor(transaction=False) as cur:
            cur.execute("SELECT count(*), coalesce(sum(length(checkpoint) + length(metadata)), 0) FROM checkpoints "
                        "WHERE thread_id = ?", (thread_id,))
            n, b = cur.fetchone()
            cur.execute("SELECT coalesce(sum(length(value)), 0) FROM writes WHERE thread_id = ?", (thread_id,))
            (w,) = cur.fetchone()
        return {"checkpoints": int(n), "bytes": int(b) + int(w)}
    if kind == "postgres":
        total, n = 0, 0
        with _pg_connection(saver) as conn:
            for i, sql in enumerate(PG_BYTES):
                row = conn.execute(sql, (thread_id,)).fetchone()
                vals = (row["n"], row["b"]) if isinstance(row, dict) else (row[0], row[1])
                total += int(vals[1])
                if i == 0:
                    n = int(vals[0])
        return {"checkpoints": n, "bytes": total}
    return {"checkpoints": 0, "bytes": 0}
