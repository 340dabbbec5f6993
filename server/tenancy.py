"""Who a request acts for, and the checks that keep a tenant key to its own users.

:class:`memchat.server.auth.AuthMiddleware` puts the authenticated :class:`Principal` on the request
(``request.state.principal``): the admin key (or a server without keys) may act for every user, a tenant
key only for the users listed for it in the keys file. The checks live here, one per route family:

* :func:`guard`, a dependency of every route: path parameters ``thread_id`` / ``thread`` and ``user_id`` /
  ``user``, the ``user`` / ``user_id`` query parameter and the ``X-Thread-ID`` / ``X-User-ID`` headers;
* :func:`chat_scope` for the fields of a chat body, :func:`graph_config` for ``configurable`` of the
  LangServe routes, :func:`visible_threads` for ``GET /v1/threads``.

A thread belongs to the users recorded for it (every speaker in the registry, else the user in its
checkpoint): a tenant may use it only when every one of them is its own. A thread no one has spoken in
yet is free to start. Refusals are 403 ``forbidden``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from memchat.backends.registry import legacy_user, speakers
from memchat.server.schemas import APIError, check_id

THREAD_PARAMS = ("thread_id", "thread")
USER_PARAMS = ("user_id", "user")


@dataclass(frozen=True)
class Principal:
    """The admin (``users is None``: every user) or a tenant key and its users (the first is the default)."""

    name: str
    users: tuple[str, ...] | None = None

    @property
    def admin(self) -> bool:
        """Whether it may act for every user."""
        return self.users is None

    def may(self, user: str | None) -> bool:
        """Whether it may act for ``user``."""
        return self.users is None or (user is not None and user in self.users)


ADMIN = Principal("admin")


def principal_of(request: Request) -> Principal:
    """The request's principal (the admin when the server checks no key)."""
    found = request.scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else ADMIN


def _forbidden(what: str) -> APIError:
    return APIError(403, f"this API key may not act for {what}", code="forbidden")


def check_user(p: Principal, user: str | None) -> str | None:
    """The user to act for: ``user`` (403 when not the key's), or the key's first user when none."""
    if p.users is None:
        return user
    if user is None:
        return p.users[0]
    if not p.may(user):
        raise _forbidden(f"user {user!r}")
    return user


def thread_owners(memchat: Any, thread_id: str) -> list[str] | None:
    """The users a thread belongs to (``None``: no one has spoken in it yet). Sync: run in the pool."""
    row = memchat.registry.row(thread_id)
    if row is not None:
        return speakers(row)
    st = memchat.state(thread_id)
    if not st:
        return None
    user = legacy_user(st.get("user_id"))
    return [user] if user else []


def may_use_thread(p: Principal, owners: list[str] | None) -> bool:
    """Whether ``p`` may read, continue or delete a thread with these owners."""
    return p.users is None or owners is None or (bool(owners) and all(p.may(u) for u in owners))


async def check_thread(request: Request, thread_id: str | None) -> None:
    """403 when the request's principal may not use the thread."""
    p = principal_of(request)
    if p.admin or not thread_id:
        return
    server = request.app.state.server
    owners = await server.call(thread_owners, server.memchat, thread_id)
    if not may_use_thread(p, owners):
        raise _forbidden(f"thread {thread_id!r} (it belongs to other users)")


async def guard(request: Request) -> None:
    """The check of every route: the ids in the path, the query and the headers."""
    p = principal_of(request)
    if p.admin:
        return
    params = request.path_params
    users = [params.get(k) for k in USER_PARAMS]
    users += [request.query_params.get(k) for k in USER_PARAMS]
    users.append(request.headers.get("x-user-id"))
    for raw in users:
        if isinstance(raw, str) and raw.strip():
            check_user(p, check_id(raw, "user"))
    threads = [params.get(k) for k in THREAD_PARAMS] + [request.headers.get("x-thread-id")]
    for raw in threads:
        if isinstance(raw, str) and raw.strip():
            await check_thread(request, check_id(raw, "thread_id"))


async def chat_scope(request: Request, user: str | None, thread_id: str | None) -> str | None:
    """The user a chat request acts for (the key's first user when none is named); 403 for another
    tenant's user or thread."""
    user = check_user(principal_of(request), user)
    await check_thread(request, thread_id)
    return user


async def graph_config(conf: dict[str, Any], request: Request) -> dict[str, Any]:
    """``configurable`` of a LangServe request, with the tenant's user (its first when none); 403 for
    another tenant's user or thread."""
    p = principal_of(request)
    if p.admin:
        return conf
    raw = conf.get("user_id")
    if raw is not None and not isinstance(raw, str):
        raise APIError(400, "configurable.user_id must be a string", param="user_id")
    conf["user_id"] = check_user(p, check_id(raw, "user_id"))
    tid = conf.get("thread_id")
    await check_thread(request, check_id(tid, "thread_id") if isinstance(tid, str) else None)
    return conf


def visible_threads(memchat: Any, p: Principal, user: str | None) -> list[dict[str, Any]]:
    """Registry rows ``p`` may see (``user``'s, or all of them), most recent first. Sync: run in the pool."""
    if p.users is None:
        return memchat.threads(user)  # type: ignore[no-any-return]
    rows: dict[str, dict[str, Any]] = {}
    for u in ([user] if user else p.users):
        for row in memchat.threads(u):
            if may_use_thread(p, speakers(row)):
                rows[row["id"]] = row
    return sorted(rows.values(), key=lambda r: -float(r.get("updated") or 0))


def default_user(request: Request) -> str | None:
    """The key's first user for a request that names none (``None`` for the admin)."""
    p = principal_of(request)
    return p.users[0] if p.users else None
