"""Auth on every route: the server's own OpenAPI spec × methods, every mounted route (LangServe under
/graph, docs, the page and /static), unknown paths; the /login session cookie and its limits."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Mount, Route

from memchat.backends.engine import Engine
from memchat.chat import MemChat
from memchat.server import auth
from memchat.server.app import create_app
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.serving import serve_app

KEY = "sk-auth-Zq81"
AUTH = {"Authorization": f"Bearer {KEY}"}
PUBLIC = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/ready")}
BAD_CREDENTIALS: list[tuple[str, dict[str, str]]] = [
    ("no key", {}),
    ("wrong bearer", {"Authorization": "Bearer sk-wrong"}),
    ("key as basic", {"Authorization": f"Basic {KEY}"}),
    ("bearer without token", {"Authorization": "Bearer"}),
    ("key prefix", {"Authorization": f"Bearer {KEY[:-1]}"}),
    ("wrong cookie", {"Cookie": "memchat_key=sk-wrong"}),
    ("forged session", {"Cookie": f"memchat_key=s1.{int(time.time()) + 3600}.{'0' * 64}"}),
    ("session of another key", {"Cookie": f"memchat_key={auth.session_token(b'other-key')}"}),
    ("expired session", {"Cookie": f"memchat_key={auth.session_token(KEY.encode(), now=time.time() - 10, ttl=5)}"}),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="fake", data_dir=tmp_path_factory.mktemp("auth"),
                        api_key=KEY, login_max_failures=0,  # hundreds of failed logins: no throttling here
                        _env_file=None)  # type: ignore[call-arg]
    mc = MemChat(engine=Engine(settings, llm=ScriptedChatModel()))
    return create_app(settings, mc, probe=False)


@pytest.fixture(scope="module")
def base(app: FastAPI) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "t1", path)


def all_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, concrete path) for every operation in the OpenAPI spec and every route the app serves."""
    out: set[tuple[str, str]] = set()
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
                out.add((method.upper(), _fill(path)))
    for route in app.routes:
        if isinstance(route, Route):  # APIRoute too: the LangServe routes, /docs, /openapi.json, /
            for method in route.methods or ():
                out.add((method, _fill(route.path)))
        elif isinstance(route, Mount):
            static = Path(__file__).resolve().parents[2] / "server" / "static"
            for f in sorted(static.iterdir()):
                out.add(("GET", f"{route.path}/{f.name}"))
            out.add(("GET", f"{route.path}/nope.js"))
    out |= {("GET", "/nope"), ("POST", "/v1/nope"), ("OPTIONS", "/v1/chat/completions"), ("PUT", "/v1/threads"),
            ("DELETE", "/health"), ("POST", "/health"), ("GET", "/login"), ("GET", "/static/../server/auth.py"),
            ("HEAD", "/"), ("HEAD", "/static/app.js"), ("HEAD", "/metrics")}
    return out


def test_the_route_list_covers_the_api(app: FastAPI) -> None:
    routes = all_routes(app)
    paths = {p for _, p in routes}
    for expected in ("/", "/static/app.js", "/static/index.html", "/metrics", "/docs", "/openapi.json", "/login",
                     "/logout", "/v1/chat/completions", "/v1/models", "/v1/threads/t1/memory", "/v1/users/t1/memory",
                     "/graph/invoke", "/graph/stream", "/graph/batch", "/graph/playground/t1", "/graph/stream_events"):
        assert expected in paths, expected
    assert len(routes) > 40


def test_every_route_but_health_needs_the_key(app: FastAPI, base: str) -> None:
    checked = 0
    with httpx.Client(base_url=base, timeout=30) as c:
        for method, path in sorted(all_routes(app)):
            if (method, path) in PUBLIC:
                continue
            for why, headers in BAD_CREDENTIALS:
                r = c.request(method, path, headers=headers, content=b"{}" if method in ("POST", "PUT") else None)
                assert r.status_code == 401, f"{method} {path} ({why}): {r.status_code} {r.text[:200]}"
                assert "x-request-id" in r.headers
                if method != "HEAD" and path != "/":
                    assert r.json()["error"]["code"] == "invalid_api_key", (method, path)
                assert r.headers["www-authenticate"] == "Bearer", (method, path)
                assert "set-cookie" not in r.headers
                checked += 1
        assert checked > 300
        # the public route, and the key opening the others
        assert c.get("/health").status_code == 200
        for path in ("/", "/static/app.js", "/metrics", "/v1/models", "/v1/threads", "/openapi.json", "/docs",
                     "/graph/input_schema"):
            assert c.get(path, headers=AUTH).status_code == 200, path


def test_unauthenticated_page_is_a_login_form(base: str) -> None:
    for headers in ({}, {"Accept": "text/html"}):
        r = httpx.get(f"{base}/", headers=headers)
        assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
        page = r.text
        assert '<form id="login" method="post" action="/login">' in page and 'name="key"' in page
        assert not re.search(r"(src|href)=\"(https?:)?//", page)  # self-contained: no external assets
        assert "<script" not in page
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    # a browser opening another page gets the form too, with the way back
    r = httpx.get(f"{base}/docs?x=1", headers={"Accept": "text/html,application/xhtml+xml"})
    assert r.status_code == 401 and 'name="next" value="/docs?x=1"' in r.text
    # API clients get JSON
    r = httpx.get(f"{base}/v1/threads", headers={"Accept": "application/json"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def _session(r: httpx.Response) -> str:
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("memchat_key=")
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attrs and "samesite=strict" in cookie.lower()
    assert "secure" not in attrs  # plain http on loopback; set when the request came over https
    value = cookie.split(";")[0].split("=", 1)[1]
    assert KEY not in value  # a signed session token, not the key
    return value


def test_login_sets_an_httponly_strict_session_cookie(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[int] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    # JSON login
    r = httpx.post(f"{base}/login", json={"key": KEY})
    assert r.status_code == 200 and r.json()["ok"] is True
    assert compared  # the key is compared in constant time
    session = _session(r)
    cookies = {"Cookie": f"memchat_key={session}"}
    assert httpx.get(f"{base}/", headers=cookies).status_code == 200
    assert "memchat" in httpx.get(f"{base}/", headers=cookies).text
    assert httpx.get(f"{base}/v1/threads", headers=cookies).status_code == 200
    assert httpx.get(f"{base}/metrics", headers=cookies).status_code == 200
    page = httpx.get(f"{base}/", headers=cookies)
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # the key itself as the cookie value works too
    assert httpx.get(f"{base}/v1/threads", headers={"Cookie": f"memchat_key={KEY}"}).status_code == 200

    # form login: 303 to the page (or a local `next`, never another site)
    for nxt, where in (("", "/"), ("/docs", "/docs"), ("//evil.example/x", "/"), ("https://evil.example", "/"),
                       ("/\\evil.example", "/")):
        r = httpx.post(f"{base}/login", data={"key": KEY, "next": nxt})
        assert r.status_code == 303 and r.headers["location"] == where, nxt
        _session(r)

    # wrong or missing key: 401, no cookie
    for body in ({"key": "nope"}, {"key": ""}, {}):
        r = httpx.post(f"{base}/login", json=body)
        assert r.status_code == 401 and "set-cookie" not in r.headers
        assert r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(f"{base}/login", data=body)
        assert r.status_code == 401 and "set-cookie" not in r.headers
        assert '<form id="login"' in r.text
    assert httpx.post(f"{base}/login", content=b"{nope", headers={"Content-Type": "application/json"}).status_code == 400
    assert httpx.post(f"{base}/login", content=b"x" * 10_000,
                      headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 413
    assert httpx.post(f"{base}/login", content=b"<key/>", headers={"Content-Type": "text/xml"}).status_code == 415


def test_cookie_writes_only_from_the_same_origin_and_logout(base: str) -> None:
    session = _session(httpx.post(f"{base}/login", json={"key": KEY}))
    host = base.split("//", 1)[1]
    cookie = {"Cookie": f"memchat_key={session}"}
    chat = {"model": "memchat", "messages": [{"role": "user", "content": "hello"}]}
    for bad in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                {"Sec-Fetch-Site": "same-site", "Origin": f"http://{host}"}):
        r = httpx.post(f"{base}/v1/chat/completions", json=chat, headers={**cookie, **bad})
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin", bad
        assert httpx.delete(f"{base}/v1/threads/x", headers={**cookie, **bad}).status_code == 403
    # reads are fine cross-site (SameSite=Strict keeps the cookie out of them in browsers anyway)
    assert httpx.get(f"{base}/v1/threads", headers={**cookie, "Origin": "http://evil.example"}).status_code == 200
    # same origin, or no origin at all (not a browser): allowed
    ok = {**cookie, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    assert httpx.delete(f"{base}/v1/threads/x", headers=ok, timeout=60).status_code == 200  # (loads the store)
    assert httpx.delete(f"{base}/v1/threads/x", headers=cookie).status_code == 200
    # Bearer requests are not bound to an origin
    assert httpx.delete(f"{base}/v1/threads/x", headers={**AUTH, "Origin": "http://elsewhere.example"}).status_code == 200

    r = httpx.post(f"{base}/logout", headers=ok)
    assert r.status_code == 200
    assert r.headers["set-cookie"].startswith('memchat_key=""') and "max-age=0" in r.headers["set-cookie"].lower()
    assert httpx.post(f"{base}/logout").status_code == 401


def test_session_tokens() -> None:
    key = b"k-123"
    tok = auth.session_token(key, now=1000.0, ttl=60)
    assert auth.valid_cookie(key, tok, now=1059.0)
    assert not auth.valid_cookie(key, tok, now=1061.0)  # expired
    assert not auth.valid_cookie(b"k-124", tok, now=1000.0)  # another key
    exp, nonce, sig = tok[len("s1."):].split(".")
    assert not auth.valid_cookie(key, f"s1.{int(exp) + 100}.{nonce}.{sig}", now=1000.0)  # a longer life is not signed
    assert auth.session_token(key, now=1000.0, ttl=60) != tok  # each sign-in its own token (revoked alone)
    for junk in ("", "s1.", "s1.abc.def", "s1.1.2.3", "s1." + "9" * 40 + ".x", "k-12", "k-1234"):
        assert not auth.valid_cookie(key, junk, now=1000.0), junk
    assert auth.valid_cookie(key, "k-123")
    assert auth.safe_next("/a?b=1") == "/a?b=1"
    for bad in (None, "", "a", "//x", "/\\x", "http://x", "/a\nb"):
        assert auth.safe_next(bad) == "/"


def test_no_key_configured_means_no_auth(tmp_path: Path) -> None:
    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="fake", data_dir=tmp_path,
                        _env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, MemChat(engine=Engine(settings, llm=ScriptedChatModel())), probe=False)
    with serve_app(app) as url:
        assert httpx.get(f"{url}/").status_code == 200
        assert httpx.get(f"{url}/v1/threads").status_code == 200
        r = httpx.post(f"{url}/login", json={"key": "anything"})
        assert r.status_code == 200 and "set-cookie" not in r.headers
