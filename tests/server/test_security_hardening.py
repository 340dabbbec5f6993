"""Regressions of the adversarial review (issue 17, items 3, 8, 9, 10), black-box through the HTTP API:
cross-site writes and DNS rebinding without a key, bad input answered 4xx (never 500, and no 500 that echoes
an exception), backend 4xx caused by the client answered 400 (not a retryable 503), and sign-out that
revokes the session token (on a second replica over the same store too)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from memchat.backends.engine import Engine
from memchat.chat import MemChat
from memchat.server.app import _api_error, create_app
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.serving import STUB_MODEL, StubURL, serve_app

KEY = "sk-hardening"
AUTH = {"Authorization": f"Bearer {KEY}"}
ALLOWED = "chat.example.org"


@dataclass
class Served:
    url: str
    mc: MemChat

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1]


@pytest.fixture(scope="module")
def open_srv(stub: StubURL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The default: no key, loopback, over the SGLang stub (which answers 400 to an impossible max_tokens)."""
    settings = Settings(llm_base_url=stub, llm_model=STUB_MODEL, data_dir=tmp_path_factory.mktemp("open"),
                        allowed_hosts=ALLOWED, llm_max_retries=0, _env_file=None)  # type: ignore[call-arg]
    mc = MemChat(settings)
    with serve_app(create_app(settings, mc)) as url:
        yield Served(url, mc)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two replicas with a key over one data dir (one store), scripted LLM."""
    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="fake", api_key=KEY,
                        data_dir=tmp_path_factory.mktemp("keyed"), _env_file=None)  # type: ignore[call-arg]
    engine = Engine(settings, llm=ScriptedChatModel())
    a = create_app(settings, MemChat(engine=engine), probe=False)
    b = create_app(settings, MemChat(engine=engine), probe=False)
    with serve_app(a) as url_a, serve_app(b) as url_b:
        yield url_a, url_b


def turn(thread: str, text: str = "My name is Mallory.", **conf: Any) -> dict[str, Any]:
    return {"input": {"messages": [["user", text]]},
            "config": {"configurable": {"thread_id": thread, "user_id": f"u-{thread}", **conf}}}


def code(r: httpx.Response, status: int) -> str | None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    return r.json()["error"]["code"]  # type: ignore[no-any-return]


def unknown_thread(base: str, thread: str, **kw: Any) -> bool:
    return httpx.get(f"{base}/v1/threads/{thread}/memory", timeout=30, **kw).status_code == 404


# ---- item 3: no key on loopback -------------------------------------------------------------------


def test_keyless_server_refuses_cross_site_writes_and_non_json_bodies(open_srv: Served) -> None:
    base, body = open_srv.url, turn("csrf")
    raw = json.dumps(body)
    # the "simple" requests a web page may send without a CORS preflight
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = httpx.post(f"{base}/graph/invoke", content=raw, headers={"Content-Type": ctype})
        assert code(r, 415) == "unsupported_media_type", ctype
        r = httpx.post(f"{base}/v1/chat/completions", content=raw, headers={"Content-Type": ctype, "X-Thread-ID": "csrf"})
        assert code(r, 415) == "unsupported_media_type", ctype
    assert code(httpx.post(f"{base}/graph/batch", content=raw.encode()), 415) == "unsupported_media_type"  # no type
    # JSON, but the browser says another site or origin sent it
    for bad in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://localhost:1"},
                {"Origin": f"http://{open_srv.host}", "Sec-Fetch-Site": "cross-site"}):
        assert code(httpx.post(f"{base}/graph/invoke", json=body, headers=bad), 403) == "cross_origin", bad
        assert code(httpx.delete(f"{base}/v1/users/u-csrf/memory", headers=bad), 403) == "cross_origin", bad
    assert unknown_thread(base, "csrf")  # nothing was written
    # reads pass (the browser's CORS keeps their answers from the page); the server's own page and
    # clients that are not browsers may write
    assert httpx.get(f"{base}/v1/threads", headers={"Origin": "http://evil.example"}).status_code == 200
    own = {"Origin": f"http://{open_srv.host}", "Sec-Fetch-Site": "same-origin"}
    assert httpx.post(f"{base}/graph/invoke", json=body, headers=own, timeout=120).status_code == 200
    assert httpx.post(f"{base}/graph/invoke", json=turn("csrf", "hello"), timeout=120).status_code == 200
    assert httpx.post(f"{base}/v1/threads/csrf/summarize", timeout=120).status_code != 415  # no body: no type needed


def test_keyless_server_answers_only_to_known_host_names(open_srv: Served) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example."""
    base = open_srv.url
    for host in ("evil.example", "evil.example:80", "localhost.evil.example", "127.0.0.1.nip.io",
                 f"{ALLOWED}.evil.example", "example.org", "[::2]"):
        r = httpx.get(f"{base}/v1/threads", headers={"Host": host})
        assert code(r, 400) == "invalid_host", host
        assert code(httpx.post(f"{base}/graph/invoke", json=turn("rebind"), headers={"Host": host}), 400) == "invalid_host"
    assert unknown_thread(base, "rebind")
    for host in ("localhost", "localhost:5", "LOCALHOST:8000", "127.0.0.1", open_srv.host, "[::1]:8000", ALLOWED,
                 f"{ALLOWED}:8443", "Chat.Example.Org"):
        assert httpx.get(f"{base}/v1/threads", headers={"Host": host}).status_code == 200, host
    # behind a proxy under an allowed name, the page's own origin is that name
    r = httpx.post(f"{base}/v1/threads/none/summarize", headers={"Host": ALLOWED, "Origin": f"https://{ALLOWED}"})
    assert r.status_code == 404


def test_with_a_key_the_host_is_free_and_bodies_are_json(keyed: tuple[str, str]) -> None:
    base = keyed[0]
    assert httpx.get(f"{base}/v1/threads", headers={**AUTH, "Host": "memchat.prod.example"}).status_code == 200
    r = httpx.post(f"{base}/graph/invoke", content=json.dumps(turn("k")), headers={**AUTH, "Content-Type": "text/plain"})
    assert code(r, 415) == "unsupported_media_type"
    # the login form still posts a form
    assert httpx.post(f"{base}/login", data={"key": KEY}).status_code == 303


# ---- item 8: bad input is 4xx, never 500 ------------------------------------------------------------


def test_session_cookie_with_unicode_digits_is_a_401(keyed: tuple[str, str]) -> None:
    # uvicorn decodes headers as latin-1: b"\xb2" is "²", which str.isdigit accepts and int() refuses (a
    # quoted cookie value may hold any character)
    for raw in (b'memchat_key="s1.\xb2\xb3.0a.ff"', b'memchat_key="s1.1\xb9.x"', b'memchat_key="s1.\xb2"',
                b"memchat_key=s1.\xb2\xb3.0a.ff"):
        r = httpx.get(f"{keyed[0]}/v1/threads", headers={"Cookie": raw})
        assert code(r, 401) == "invalid_api_key", raw
        assert httpx.get(f"{keyed[0]}/", headers={"Cookie": raw, "Accept": "text/html"}).status_code == 401


def test_deeply_nested_json_is_a_400(open_srv: Served) -> None:
    base, hdr = open_srv.url, {"Content-Type": "application/json", "X-Thread-ID": "deep"}
    for depth in (100, 5000, 100_000):
        nested = "[" * depth + "]" * depth
        for route, body in (("/graph/invoke", f'{{"input": {nested}}}'),
                            ("/graph/batch", f'{{"inputs": [{nested}]}}'),
                            ("/graph/stream", f'{{"input": {{"messages": {nested}}}}}'),
                            ("/graph/invoke", '{"input": {"messages": [["user", "hi"]]}, "config": {"configurable": '
                                              f'{{"llm_params": {{"response_format": {nested}}}}}}}}}')):
            r = httpx.post(f"{base}{route}", content=body, headers=hdr, timeout=60)
            assert r.status_code == 400, (route, depth, r.status_code, r.text[:200])
        r = httpx.post(f"{base}/v1/chat/completions", content=f'{{"model": "m", "messages": {nested}}}', headers=hdr)
        assert 400 <= r.status_code < 500, (depth, r.status_code)
    assert unknown_thread(base, "deep")


@pytest.mark.parametrize("params", [
    {"max_tokens": "abc"}, {"max_tokens": 0}, {"max_tokens": 1.5}, {"max_tokens": [1]}, {"temperature": "hot"},
    {"temperature": 7}, {"top_p": -1}, {"stop": 5}, {"stop": [1, 2]}, {"seed": "s"}, {"response_format": "json"},
    {"response_format": {"type": "xml"}}, {"response_format": {"type": "json_schema"}},
    {"unknown": 1}, "max_tokens=5", [1],
])
def test_ill_typed_generation_parameters_are_a_400(open_srv: Served, params: Any) -> None:
    base = open_srv.url
    for route in ("/graph/invoke", "/graph/stream", "/graph/stream_events"):
        body = {**turn("typed"), "config": {"configurable": {"thread_id": "typed", "llm_params": params}}}
        r = httpx.post(f"{base}{route}", json=body, timeout=60)
        assert r.status_code == 400 and "llm_params" in r.json()["error"]["message"], (route, r.text[:300])
    assert unknown_thread(base, "typed")


def test_a_batch_with_one_bad_item_runs_no_item(open_srv: Served) -> None:
    base = open_srv.url
    items = ["b1", "b2", "b3"]
    body: dict[str, Any] = {"inputs": [turn(t)["input"] for t in items],
                            "config": [turn(t)["config"] for t in items]}
    body["config"][2]["configurable"]["llm_params"] = {"max_tokens": "abc"}
    r = httpx.post(f"{base}/graph/batch", json=body, timeout=120)
    assert r.status_code == 400 and "llm_params" in r.text
    assert all(unknown_thread(base, t) for t in items)  # the good items did not commit before the error
    body["config"][2]["configurable"]["llm_params"] = {"max_tokens": 64}
    r = httpx.post(f"{base}/graph/batch", json=body, timeout=180)
    assert r.status_code == 200, r.text[:300]
    assert [o["turn"] for o in r.json()["output"]] == [1, 1, 1]  # the retry runs each item once


def test_a_500_echoes_no_exception_text(open_srv: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "db-password=hunter2 at /srv/secret/path"

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError(secret)

    monkeypatch.setattr(open_srv.mc, "threads", boom)  # a route's own failure
    monkeypatch.setattr(open_srv.mc, "stream_turn", boom)  # a turn's failure (mapped by the chat route)
    chat = {"model": "memchat", "messages": [{"role": "user", "content": "hi"}]}
    for r in (httpx.get(f"{open_srv.url}/v1/threads", headers={"X-Request-ID": "req-500-a"}),
              httpx.post(f"{open_srv.url}/v1/chat/completions", json=chat,
                         headers={"X-Thread-ID": "t500", "X-Request-ID": "req-500-b"}, timeout=60)):
        err = r.json()["error"]
        assert r.status_code == 500 and err["code"] == "internal_error"
        assert "hunter2" not in r.text and "RuntimeError" not in r.text
        assert r.headers["x-request-id"] in err["message"]  # what to quote to the operator


# ---- item 9: a backend 4xx caused by the client is a 400 ----------------------------------------------


def test_backend_rejection_of_the_request_is_a_400_not_a_retryable_503(open_srv: Served) -> None:
    base = open_srv.url
    ask = {"model": "memchat", "max_tokens": 100_000_000, "messages": [{"role": "user", "content": "hi"}]}
    for stream in (False, True):
        for headers in ({"X-Thread-ID": "huge"}, {}):
            r = httpx.post(f"{base}/v1/chat/completions", json={**ask, "stream": stream}, headers=headers, timeout=60)
            assert code(r, 400) == "backend_rejected", (stream, headers)
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and "maximum context length" in err["message"]
            assert "retry-after" not in r.headers
    r = httpx.post(f"{base}/graph/invoke", json=turn("huge", llm_params={"max_tokens": 100_000_000}), timeout=60)
    assert code(r, 400) == "backend_rejected"
    assert unknown_thread(base, "huge")  # nothing was saved
    counted = httpx.get(f"{base}/metrics").text
    assert 'mode="graph",outcome="backend_rejected"' in counted and 'mode="thread",outcome="backend_rejected"' in counted
    assert httpx.get(f"{base}/health").json()["status"] == "ok"  # and the backend is not marked down


def _openai_error(cls: type[openai.APIStatusError], status: int, headers: dict[str, str] | None = None
                  ) -> openai.APIStatusError:
    response = httpx.Response(status, headers=headers, request=httpx.Request("POST", "http://llm/v1/chat/completions"))
    return cls(f"Error code: {status}", response=response, body={"message": f"backend says {status}"})


def test_backend_status_mapping() -> None:
    from memchat.backends.llm import BackendError, BackendRejected, classify_error

    rejected = classify_error(_openai_error(openai.BadRequestError, 400))
    assert isinstance(rejected, BackendRejected)
    err = _api_error(rejected, "t")
    assert (err.status, err.code) == (400, "backend_rejected") and "backend says 400" in err.message
    assert _api_error(classify_error(_openai_error(openai.UnprocessableEntityError, 422)), None).status == 400
    # a backend refusing memchat's own key is the server's misconfiguration: 503, as before
    for cls, status in ((openai.AuthenticationError, 401), (openai.PermissionDeniedError, 403)):
        exc = classify_error(_openai_error(cls, status))
        assert type(exc) is BackendError
        assert (_api_error(exc, None).status, _api_error(exc, None).code) == (503, "backend_unavailable")
    busy = _api_error(classify_error(_openai_error(openai.RateLimitError, 429, {"retry-after": "7"})), None)
    assert (busy.status, busy.code) == (503, "backend_busy")
    assert busy.response().headers["retry-after"] == "7"


# ---- item 10: sign-out revokes the session ----------------------------------------------------------


def _login(base: str) -> str:
    r = httpx.post(f"{base}/login", json={"key": KEY})
    assert r.status_code == 200
    return r.cookies["memchat_key"]


def test_logout_revokes_the_session_token_on_every_replica(keyed: tuple[str, str]) -> None:
    a, b = keyed
    first, second = _login(a), _login(a)
    assert first != second
    cookie = {"Cookie": f"memchat_key={first}"}
    for base in (a, b):
        assert httpx.get(f"{base}/v1/threads", headers=cookie).status_code == 200
    r = httpx.post(f"{a}/logout", headers={**cookie, "Origin": a})
    assert r.status_code == 200 and "max-age=0" in r.headers["set-cookie"].lower()
    # the stolen or kept cookie no longer works, on this replica or another one over the same store
    for base in (a, b):
        assert code(httpx.get(f"{base}/v1/threads", headers=cookie), 401) == "invalid_api_key"
        page = httpx.get(f"{base}/", headers={**cookie, "Accept": "text/html"})
        assert page.status_code == 401 and "sign in again" in page.text
        # the other sign-in is untouched
        assert httpx.get(f"{base}/v1/threads", headers={"Cookie": f"memchat_key={second}"}).status_code == 200
    assert httpx.post(f"{b}/logout", headers=cookie).status_code == 401
