"""``POST /login`` and ``POST /logout`` for the web page (see :mod:`memchat.server.auth`).

``/login`` takes the admin key or a tenant key (form field or JSON ``key``) and sets the session cookie: a
signed token for the admin (``s1.…``) or for the tenant key (``t1.…``, :mod:`memchat.server.keys`). Failed attempts
are throttled per client address (:class:`memchat.server.throttle.LoginThrottle`): 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from memchat.server.auth import (
    _TOKEN_PREFIX,
    COOKIE_NAME,
    LOGIN_MAX_BYTES,
    SESSION_SECONDS,
    SessionRevocations,
    _cookie_value,
    login_page,
    safe_next,
    session_token,
)
from memchat.server.keys import TENANT_TOKEN_PREFIX, KeyStore, tenant_session
from memchat.server.schemas import APIError
from memchat.server.throttle import LoginThrottle

# ---- /login and /logout -----------------------------------------------------------------------------


async def _read_login(request: Request) -> tuple[dict[str, Any], bool]:
    """The login fields and whether they came as JSON."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_MAX_BYTES:
            raise APIError(413, f"login body over {LOGIN_MAX_BYTES} bytes", code="request_too_large")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or (not ctype and body.lstrip().startswith(b"{")):
        try:
            data = json.loads(body or b"{}")
        except ValueError as exc:
            raise APIError(400, "login body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise APIError(400, "login body must be a JSON object with 'key'")
        return data, True
    if ctype in ("application/x-www-form-urlencoded", ""):
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError) as exc:
            raise APIError(400, "login form is not valid") from exc
        return {k: v[0] for k, v in form.items() if v}, False
    raise APIError(415, "send the key as a form (application/x-www-form-urlencoded) or JSON {\"key\": ...}",
                   code="unsupported_media_type")


def _set_session(response: Response, token: str, request: Request) -> None:
    response.set_cookie(COOKIE_NAME, token, max_age=SESSION_SECONDS, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _throttled(wait: int, as_json: bool, next_path: str) -> Response:
    msg = f"too many failed sign-ins from this address: try again in {wait} s"
    headers = {"Retry-After": str(wait)}
    if as_json:
        return APIError(429, msg, code="login_throttled").response(headers=headers)
    page = login_page(next_path, msg, status=429)
    page.headers.update(headers)
    return page


async def login(request: Request, api_key: str | None, keys: KeyStore | None = None,
                throttle: LoginThrottle | None = None) -> Response:
    """``POST /login``: check the key (admin or tenant), set the session cookie (form: 303 to ``next``;
    JSON: 200); 429 while the client address has too many recent failures."""
    data, as_json = await _read_login(request)
    given = data.get("key", data.get("api_key"))
    next_path = safe_next(data.get("next") if isinstance(data.get("next"), str) else None)
    if not api_key and keys is None:  # no key configured: nothing to sign in to
        return JSONResponse({"ok": True, "auth": "disabled"}) if as_json else RedirectResponse(next_path, 303)
    address = _client(request)
    wait = throttle.retry_after(address) if throttle is not None else 0
    if wait:
        return _throttled(wait, as_json, next_path)
    key = (api_key or "").encode()
    token: str | None = None
    if isinstance(given, str) and given:
        if key and hmac.compare_digest(given.encode(), key):
            token = session_token(key)
        elif keys is not None:
            entry = await asyncio.to_thread(keys.match, given)
            token = tenant_session(key, entry, SESSION_SECONDS) if entry is not None else None
    if token is None:
        if throttle is not None:
            throttle.failed(address)
        msg = "Missing API key" if not given else "Invalid API key"
        if as_json:
            return APIError(401, msg, code="invalid_api_key").response(headers={"WWW-Authenticate": "Bearer"})
        return login_page(next_path, msg)
    if throttle is not None:
        throttle.succeeded(address)
    response: Response
    if as_json:
        response = JSONResponse({"ok": True, "expires_in": SESSION_SECONDS})
    else:
        response = RedirectResponse(next_path, status_code=303)
    _set_session(response, token, request)
    response.headers["Cache-Control"] = "no-store"
    return response


async def logout(request: Request, revocations: SessionRevocations | None = None) -> Response:
    """``POST /logout``: revoke the session token of the cookie (it stops working on every replica sharing
    the store) and drop the cookie (form: 303 to ``/``; otherwise 200)."""
    token = _cookie_value(request.headers)
    if revocations is not None and token and token.startswith((_TOKEN_PREFIX, TENANT_TOKEN_PREFIX)):
        await asyncio.to_thread(revocations.revoke, token)
    ctype = request.headers.get("content-type", "")
    response: Response = (RedirectResponse("/", 303) if ctype.startswith("application/x-www-form-urlencoded")
                          else JSONResponse({"ok": True}))
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response
