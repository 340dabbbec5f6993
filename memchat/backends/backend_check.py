"""``memchat check``: verify every configured backend before serving (LLM, checkpoints, store, vectors).

Each check reports what it found (the backend's model and context length, the database, the vector
store and its embedder) or a one-line reason. Nothing is written except the schema setup that the
first start would do anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memchat.settings import Settings


@dataclass
class Check:
    """The outcome of one check."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


def _run(name: str, fn: Callable[[], str]) -> Check:
    t0 = time.perf_counter()
    try:
        detail = fn()
        return Check(name, True, detail, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none raised
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check(name, False, msg, time.perf_counter() - t0)


def check_llm(settings: Settings) -> str:
    """The backend's model, kind and context window; refuses a budget larger than the context."""
    from memchat.backends.llm import probe_backend

    info = probe_backend(settings)
    ctx = f"context {info.context_length} tokens" if info.context_length else "context length not reported"
    return (f"{info.model} ({info.kind}) at {info.base_url}, {ctx}; prompt budget {settings.prompt_limit} "
            f"tokens (MEMCHAT_MAX_INPUT_TOKENS={settings.max_input_tokens})")


def check_checkpoints(settings: Settings) -> str:
    """Open (and set up) the checkpointer and the store."""
    from memchat.backends import persistence

    where = (persistence.redact(settings.checkpoint_url) if persistence.is_postgres(settings)
             else str(persistence._sqlite_path(settings, "checkpoints")))
    saver = persistence.make_checkpointer(settings)
    try:
        store = persistence.make_store(settings)
        persistence.close(store)
    finally:
        persistence.close(saver)
    kind = "PostgreSQL" if persistence.is_postgres(settings) else "SQLite"
    return f"{kind} at {where} (checkpoints and store)"


def check_vectors(settings: Settings) -> str:
    """Load the embedder and open the collection (refused when built with another embedder)."""
    from memchat.backends.embeddings import embeddings_for
    from memchat.backends.stores import make_client, make_memory, where

    emb = embeddings_for(settings)
    setting = "MEMCHAT_MILVUS_URI" if settings.vector_store == "milvus" else "MEMCHAT_CHROMA_URL"
    try:
        client: Any = make_client(settings)
    except Exception as exc:
        raise RuntimeError(f"cannot reach the {where(settings)} ({setting}): {exc}") from exc
    mem = make_memory(settings, emb, client=client)
    return f"{where(settings)}: {mem.describe()}"


def check_all(settings: Settings, *, llm: bool = True) -> list[Check]:
    """Run every check (``llm=False`` skips the LLM, e.g. to avoid starting the embedded server)."""
    checks = [_run("checkpoints", lambda: check_checkpoints(settings)),
              _run("vectors", lambda: check_vectors(settings))]
    if llm:
        checks.insert(0, _run("llm", lambda: check_llm(settings)))
    return checks


def report(checks: list[Check]) -> str:
    """One line per check, ``ok`` or ``FAIL``."""
    return "\n".join(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<12} {c.detail}" for c in checks)


def main(settings: Settings | None = None) -> int:
    """Print the report; exit status 0 when every check passed (for ``memchat check``)."""
    from memchat.settings import get_settings

    checks = check_all(settings or get_settings())
    print(report(checks))
    return 0 if all(c.ok for c in checks) else 1
