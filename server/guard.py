"""Browser-facing request checks: the ``Host`` allow-list (DNS rebinding), cross-origin writes (``Origin`` /
``Sec-Fetch-Site``) and JSON-only request bodies (no CORS-free ``text/plain`` or form posts).

Without ``MEMCHAT_API_KEY`` (the loopback default) these are the only protection against web pages the
user visits: a page may send "simple" cross-site requests (``text/plain`` / form bodies need no CORS
preflight) and may rebind its own name to 127.0.0.1 to read the answers. So, without a key:

* the ``Host`` header must name loopback (``localhost``, ``127.0.0.1``, ``[::1]``, any port) or an entry of
  ``MEMCHAT_ALLOWED_HOSTS`` (``name``, ``name:port``, ``.suffix`` for subdomains, ``*`` for any): else 400;
* a request that changes something (not GET/HEAD/OPTIONS) must not say it comes from another site
  (``Sec-Fetch-Site`` other than ``same-origin`` / ``none``) or another origin (``Origin`` whose host:port is
  neither the request's ``Host`` nor an ``MEMCHAT_ALLOWED_HOSTS`` entry): else 403.

With a key, the key is what protects the data (a page cannot send ``Authorization``, and the session cookie
has its own same-origin check in :mod:`memchat.server.auth`), so the ``Host`` check applies only when
``MEMCHAT_ALLOWED_HOSTS`` is set (a reverse proxy or a Kubernetes probe may use any name) and the origin check
is left to the cookie check. Always, with or without a key: ``POST`` / ``PUT`` / ``PATCH`` bodies must be
``application/json`` (an empty body may come without a type), except ``/login`` and ``/logout``, which take
the login form: else 415.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from memchat.server.schemas import APIError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
BODY_METHODS = ("POST", "PUT", "PATCH")
FORM_PATHS = ("/login", "/logout")


def parse_allowed_hosts(value: str | list[str] | None) -> tuple[str, ...]:
    """``MEMCHAT_ALLOWED_HOSTS`` (comma-separated, or a list) as lower-case entries."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return tuple(dict.fromkeys(s.strip().lower().rstrip(".") for s in items if s.strip()))


def split_host(netloc: str) -> tuple[str, str | None]:
    """``host[:port]`` → (host, port); IPv6 literals keep their brackets."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            return netloc, None
        rest = netloc[end + 1:]
        return netloc[: end + 1], rest[1:] if rest.startswith(":") else None
    host, sep, port = netloc.rpartition(":")
    return (host, port) if sep else (netloc, None)


def _matches(entry: str, netloc: str) -> bool:
    """Whether ``netloc`` (host[:port]) matches an allow-list entry (``name``, ``name:port``, ``.suffix``)."""
    if entry == "*":
        return True
    host, port = split_host(netloc)
    host = host.rstrip(".")
    e_host, e_port = split_host(entry)
    if e_port is not None and e_port != port:
        return False
    if e_host.startswith("."):
        return host.endswith(e_host) or host == e_host[1:]
    return host == e_host


class RequestGuardMiddleware:
    """Applies the checks of this module (see the module docstring for what applies when)."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...], keyless: bool) -> None:
        self.app = app
        self.allowed = allowed_hosts
        self.check_host = keyless or bool(allowed_hosts)
        self.check_origin = keyless

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        err = self.refusal(scope["method"], scope["path"], Headers(scope=scope))
        if err is not None:
            await err.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def host_ok(self, host: str) -> bool:
        """The ``Host`` header names loopback (any port) or an allowed host."""
        if not host:
            return False
        name, _ = split_host(host)
        return name in LOOPBACK_HOSTS or any(_matches(e, host) for e in self.allowed)

    def origin_ok(self, headers: Headers) -> bool:
        """The browser does not say that the request comes from another site or origin."""
        site = (headers.get("sec-fetch-site") or "").lower()
        if site and site not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        if origin is None:
            return True
        netloc = urlsplit(origin.strip()).netloc.lower() if origin.strip() != "null" else ""
        if not netloc:
            return False  # "null" (sandboxed frames, file: pages) or garbage
        host = (headers.get("host") or "").lower()
        return netloc == host or any(e != "*" and _matches(e, netloc) for e in self.allowed)

    def refusal(self, method: str, path: str, headers: Headers) -> APIError | None:
        """The error to answer, or ``None`` when the request may pass."""
        if self.check_host and not self.host_ok(headers.get("host") or ""):
            return APIError(400, "unknown Host header: this server answers to localhost only; add the name to "
                                 "MEMCHAT_ALLOWED_HOSTS to serve it under another name", code="invalid_host")
        if self.check_origin and method not in SAFE_METHODS and not self.origin_ok(headers):
            return APIError(403, "cross-origin request refused: this server (no MEMCHAT_API_KEY) accepts "
                                 "changes only from its own pages or from clients that are not browsers",
                            code="cross_origin")
        if method in BODY_METHODS and path not in FORM_PATHS and not _json_body(headers):
            return APIError(415, "send the request body as JSON (Content-Type: application/json)",
                            code="unsupported_media_type")
        return None


def _json_body(headers: Headers) -> bool:
    """The body is declared JSON, or there is none (no type, and no length or a zero length)."""
    ctype = headers.get("content-type")
    if ctype is None:
        length = headers.get("content-length")
        return length == "0" or (length is None and "transfer-encoding" not in headers)
    main = ctype.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))
