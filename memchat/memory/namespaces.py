"""Store namespaces and user scopes: any user or thread id is safe as a namespace label.

LangGraph stores reject namespace labels with a ``.`` (they join labels with dots) and match
``search`` prefixes as text (``("memchat", "profile", "bob")`` also matches ``bobby``). So ids are
encoded into labels (``%`` → ``%25``, ``.`` → ``%2E``; any other id, CJK and emoji included, is its own
label, which keeps existing data readable), and :func:`search_all` pages through a namespace and keeps
only exact matches, with no window.

A request without a user gets the thread's own scope, :func:`thread_scope`: its profile slots and
user-scoped facts belong to that thread alone. Scope ids contain ``/``, which API user ids cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

NO_LIMIT = 2**62  # a store search that returns every match (SQLite and PostgreSQL take a 64-bit LIMIT)
THREAD_SCOPE = "thread/"  # prefix of a thread's own scope (a request without a user)
LEGACY_ANONYMOUS = "anonymous"  # what requests without a user were before; treated as the thread's own

THREADS_NS = ("memchat", "threads")  # thread id → {"user_id", "users", "turns", "updated"}
FORGETTING_NS = ("memchat", "forgetting")  # user id → {"until"}: turns of the user refused meanwhile
META_NS = ("memchat", "meta")


def encode_label(value: str) -> str:
    """A namespace label for any id (reversible; ids without ``.`` or ``%`` are unchanged)."""
    return value.replace("%", "%25").replace(".", "%2E")


def decode_label(label: str) -> str:
    """The id behind :func:`encode_label`."""
    return label.replace("%2E", ".").replace("%25", "%")


def profile_namespace(user: str) -> tuple[str, ...]:
    """Store namespace of a user's cross-thread slots."""
    return ("memchat", "profile", encode_label(user))


def audit_namespace(user: str) -> tuple[str, ...]:
    """Store namespace of a user's slot audit log."""
    return ("memchat", "audit", encode_label(user))


def user_threads_namespace(user: str) -> tuple[str, ...]:
    """Store namespace indexing every thread the user spoke in (key: thread id)."""
    return ("memchat", "user-threads", encode_label(user))


def thread_scope(thread_id: str) -> str:
    """The user scope of a thread without a user: its profile and facts are the thread's own."""
    return THREAD_SCOPE + thread_id


def is_thread_scope(user: str | None) -> bool:
    """Whether ``user`` is a thread's own scope rather than a user."""
    return bool(user) and str(user).startswith(THREAD_SCOPE)


def public_user(user: str | None) -> str | None:
    """The user id to show: ``None`` for a thread's own scope."""
    return None if not user or is_thread_scope(user) else user


def search_all(store: Any, namespace: tuple[str, ...]) -> Iterator[Any]:
    """Every item stored exactly under ``namespace`` (longer namespaces sharing the prefix are skipped).

    One query without a window: stores order pages by update time, and pages taken with offsets skip
    or repeat items whose times tie (PostgreSQL's top-N sort is not stable)."""
    for it in store.search(namespace, limit=NO_LIMIT):
        if tuple(it.namespace) == namespace:
            yield it


def keys_in(store: Any, namespace: tuple[str, ...]) -> list[str]:
    """All keys stored exactly under ``namespace`` (read fully before any change is made)."""
    return list(dict.fromkeys(it.key for it in search_all(store, namespace)))
