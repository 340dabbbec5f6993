"""API-key authentication: ``Authorization: Bearer <key>`` or the ``memchat_key`` session cookie.

Every route needs the key except ``GET /health`` and ``POST /login`` (which checks the key itself and
answers 401 when it is missing or wrong). ``POST /login`` takes the key (form field or JSON ``key``),
compares it with :func:`hmac.compare_digest` and sets an HttpOnly, ``SameSite=Strict`` cookie holding a
signed, expiring session token (HMAC-SHA256 of the expiry and a nonce under the key: the key itself is not
stored in the browser; changing ``MEMCHAT_API_KEY`` signs everyone out). ``POST /logout`` revokes the token
(:class:`SessionRevocations`, in the store). The cookie may also hold the key itself.

``GET /`` without credentials, and any ``GET`` of a browser navigating (``Accept: text/html``), gets a
401 with a small self-contained login form instead of the JSON error. Requests authenticated by the cookie that change
something (not GET/HEAD/OPTIONS) must come from the same origin when the browser says where they come
from (``Origin`` / ``Sec-Fetch-Site``): a second line behind ``SameSite=Strict`` against cross-site
request forgery.

Tenant keys (``MEMCHAT_API_KEYS_FILE``, :mod:`memchat.server.keys`) authenticate the same ways; the middleware puts
the :class:`~memchat.server.tenancy.Principal` (the admin, or the tenant key and its users) on the request
(``scope["state"]["principal"]``) for :mod:`memchat.server.tenancy` to check. Failed logins are throttled per client
address (:mod:`memchat.server.throttle`). Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import secrets
import time
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from fastapi.responses import HTMLResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from memchat.server.keys import TENANT_TOKEN_PREFIX, KeyStore, TenantKey, tenant_of_session
from memchat.server.schemas import APIError
from memchat.server.tenancy import ADMIN, Principal

log = logging.getLogger("memchat.server")

COOKIE_NAME = "memchat_key"
SESSION_SECONDS = 7 * 24 * 3600
LOGIN_MAX_BYTES = 8192
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_TOKEN_PREFIX = "s1."

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
LOGIN_CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
             "base-uri 'none'")
PAGE_CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def is_public(method: str, path: str) -> bool:
    """Routes served without credentials: the health check, and the login form's target (it checks the
    key itself)."""
    return (method in ("GET", "HEAD") and path in ("/health", "/ready")) or (method == "POST" and path == "/login")


# ---- session tokens ------------------------------------------------------------------------------


def _sign(key: bytes, expires: int, nonce: str) -> str:
    return hmac.new(key, f"memchat-session:{expires}:{nonce}".encode(), hashlib.sha256).hexdigest()


def session_token(key: bytes, now: float | None = None, ttl: int = SESSION_SECONDS) -> str:
    """A signed session token valid for ``ttl`` seconds (with a random nonce: each sign-in gets its own
    token, which ``/logout`` can revoke alone)."""
    expires = int((time.time() if now is None else now) + ttl)
    nonce = secrets.token_hex(8)
    return f"{_TOKEN_PREFIX}{expires}.{nonce}.{_sign(key, expires, nonce)}"


def _token_expiry(value: str) -> int | None:
    """The expiry of a well-formed session token (ASCII digits only: ``str.isdigit`` alone accepts "²")."""
    exp = value[len(_TOKEN_PREFIX):].partition(".")[0] if value.startswith(_TOKEN_PREFIX) else ""
    return int(exp) if exp.isascii() and exp.isdigit() and len(exp) <= 12 else None


def valid_cookie(key: bytes, value: str, now: float | None = None) -> bool:
    """The cookie holds an unexpired session token signed with ``key``, or the key itself."""
    if hmac.compare_digest(value.encode(), key):
        return True
    expires = _token_expiry(value)
    parts = value[len(_TOKEN_PREFIX):].split(".")
    if expires is None or len(parts) != 3:
        return False
    ok = hmac.compare_digest(parts[2].encode(), _sign(key, expires, parts[1]).encode())
    return ok and expires > (time.time() if now is None else now)


class SessionRevocations:
    """Session tokens signed out before they expire, kept in the LangGraph store (``None``: in memory only)
    so that every replica over the same store refuses them. Only a hash of the token is stored."""

    NAMESPACE = ("memchat", "revoked_sessions")

    def __init__(self, store: Any | None = None) -> None:
        self.store = store
        self._local: dict[str, int] = {}

    @staticmethod
    def _id(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def revoke(self, token: str) -> None:
        """Refuse ``token`` from now on (until it would have expired anyway)."""
        expires = _token_expiry(token) or int(time.time()) + SESSION_SECONDS
        self._local[self._id(token)] = expires
        if self.store is not None:
            self.store.put(self.NAMESPACE, self._id(token), {"expires": expires})

    def is_revoked(self, token: str) -> bool:
        """Whether ``token`` was signed out (here or on another replica sharing the store)."""
        if self._id(token) in self._local:
            return True
        if self.store is None:
            return False
        return self.store.get(self.NAMESPACE, self._id(token)) is not None


def _cookie_value(headers: Headers) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header: no session
        return None
    morsel = jar.get(COOKIE_NAME)
    return morsel.value if morsel is not None else None


def _same_origin(headers: Headers) -> bool:
    """False when the browser says the request comes from another site or origin."""
    site = headers.get("sec-fetch-site")
    if site and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc.lower() == (headers.get("host") or "").lower()
    return origin != "null"


# ---- the login page -------------------------------------------------------------------------------


def safe_next(value: str | None) -> str:
    """A local path to go to after login (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 0x20 for c in value):
        return "/"
    return value


def login_page(next_path: str = "/", error: str | None = None, status: int = 401) -> HTMLResponse:
    """A tiny self-contained login form (no external assets) that posts the key to ``/login``."""
    err = f'<p class="err" role="alert">{html.escape(error)}</p>' if error else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>memchat — sign in</title>
<style>
body{{font:15px/1.4 system-ui,sans-serif;background:#f5f6f8;color:#1d2330;display:grid;place-items:center;
min-height:100vh;margin:0}}
form{{background:#fff;padding:28px 32px;border-radius:10px;box-shadow:0 2px 12px #0002;width:300px}}
h1{{font-size:20px;margin:0 0 16px}}label{{display:block;margin-bottom:6px;color:#556}}
input[type=password]{{width:100%;box-sizing:border-box;padding:8px;border:1px solid #bbc;border-radius:6px}}
button{{margin-top:14px;width:100%;padding:9px;border:0;border-radius:6px;background:#2f6fed;color:#fff;
font-weight:600;cursor:pointer}}.err{{color:#b3261e;margin:0 0 12px}}
</style></head>
<body><form id="login" method="post" action="/login">
<h1>memchat</h1>{err}
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" autofocus required>
<input type="hidden" name="next" value="{html.escape(safe_next(next_path))}">
<button id="sign-in" type="submit">Sign in</button>
</form></body></html>
"""
    headers = {**PAGE_HEADERS, "Content-Security-Policy": LOGIN_CSP}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return HTMLResponse(body, status_code=status, headers=headers)


def _wants_html(headers: Headers) -> bool:
    return "text/html" in headers.get("accept", "")


# ---- the middleware --------------------------------------------------------------------------------


def tenant(entry: TenantKey) -> Principal:
    """The principal of a tenant key."""
    return Principal(entry.name, entry.users)


class AuthMiddleware:
    """401 for every request without valid credentials, except the public routes (an ASGI middleware,
    so it also covers the LangServe routes, mounted apps and unknown paths). ``api_key`` is the admin key
    (may be empty when only ``keys`` are used)."""

    def __init__(self, app: ASGIApp, api_key: str, revocations: SessionRevocations | None = None,
                 keys: KeyStore | None = None) -> None:
        self.app = app
        self.key = api_key.encode()
        self.keys = keys
        self.revocations = revocations or SessionRevocations()

    def _bearer(self, token: str) -> Principal | None:
        if self.key and hmac.compare_digest(token.encode(), self.key):
            return ADMIN
        entry = self.keys.match(token) if self.keys is not None else None
        return tenant(entry) if entry is not None else None

    async def _session(self, cookie: str) -> Principal | None:
        """The principal of a valid cookie whose session was not signed out."""
        found: Principal | None = None
        if self.key and valid_cookie(self.key, cookie):
            found = ADMIN
            if not cookie.startswith(_TOKEN_PREFIX):
                return found  # the key itself: only changing MEMCHAT_API_KEY revokes it
        elif self.keys is not None and cookie.startswith(TENANT_TOKEN_PREFIX):
            entry = await asyncio.to_thread(tenant_of_session, self.key, self.keys, cookie)
            found = tenant(entry) if entry is not None else None
        if found is None:
            return None
        try:
            return None if await asyncio.to_thread(self.revocations.is_revoked, cookie) else found
        except Exception:  # the store is unreachable: no session rather than a 500
            log.warning("session revocation check failed", exc_info=True)
            return None

    async def _pass(self, principal: Principal, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        principal = self._bearer(token) if scheme.lower() == "bearer" and token else None
        if principal is not None:
            await self._pass(principal, scope, receive, send)
            return
        cookie = _cookie_value(headers)
        principal = await self._session(cookie) if cookie else None
        if principal is not None:
            if scope["method"] not in SAFE_METHODS and not _same_origin(headers):
                err = APIError(403, "cross-origin request refused (the session cookie only works from this "
                               "server's own pages; send 'Authorization: Bearer <key>' instead)",
                               code="cross_origin")
                await err.response()(scope, receive, send)
                return
            await self._pass(principal, scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD") and (scope["path"] == "/" or _wants_html(headers)):
            path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            error = "Invalid or expired session: sign in again." if cookie else None
            await login_page(path, error)(scope, receive, send)
            return
        if token or cookie:
            msg = "Invalid API key"
        else:
            msg = "Missing API key: send 'Authorization: Bearer <key>' (or sign in at / for the session cookie)"
        err = APIError(401, msg, code="invalid_api_key")
        await err.response(headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)

