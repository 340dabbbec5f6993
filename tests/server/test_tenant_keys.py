"""Tenant keys and login throttling (issue 13, items 6 and 7).

Two tenants (A: users a1, a2; B: user b1) and the admin. Every operation of the OpenAPI spec that takes a
user or a thread refuses the other tenant's (403 ``forbidden``) and serves the owner's; an operation the
test cannot classify fails it, so a route added later without the check is caught. Also: a tenant key
without ``user`` acts for its first user, listing shows only its threads, ``/login`` with a tenant key gives a
tenant session, the keys file holds no key and is re-read when ``memchat keys`` changes it, keys never reach
the log, and failed logins are throttled per client address (429 + ``Retry-After``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from memchat.backends.engine import Engine
from memchat.chat import MemChat
from memchat.cli import app as cli_app
from memchat.server.app import create_app
from memchat.server.keys import KeyStore
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.serving import serve_app

ADMIN = "sk-admin-Tq5"
MSG = [{"role": "user", "content": "hello there"}]
RUNS = ("/graph/invoke", "/graph/batch", "/graph/stream", "/graph/stream_log", "/graph/stream_events")
UNSCOPED = {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("POST", "/login"), ("POST", "/logout"), ("GET", "/v1/models"),
            ("GET", "/graph/input_schema"), ("GET", "/graph/output_schema"), ("GET", "/graph/config_schema")}
USER_NAMES, THREAD_NAMES = ("user_id", "user"), ("thread_id", "thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tenants")
    runner = CliRunner()
    keys: dict[str, str] = {}
    for name, users in (("acme", "a1,a2"), ("bolt", "b1")):
        res = runner.invoke(cli_app, ["keys", "add", name, "--users", users, "--file", str(tmp / "keys.json")])
        assert res.exit_code == 0, res.output
        keys[name] = res.output.strip().splitlines()[-1]
    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="fake", data_dir=tmp / "data",
                        api_key=ADMIN, api_keys_file=tmp / "keys.json", _env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, MemChat(engine=Engine(settings, llm=ScriptedChatModel())), probe=False)
    with serve_app(app) as base:
        yield {"app": app, "base": base, "keys": keys, "file": tmp / "keys.json", "runner": runner}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(base: str, key: str, thread: str | None, **body: Any) -> httpx.Response:
    headers = {**bearer(key), **({"X-Thread-ID": thread} if thread else {})}
    return httpx.post(f"{base}/v1/chat/completions", json={"model": "memchat", "messages": MSG, **body},
                      headers=headers, timeout=60)


def fill(path: str, user: str, thread: str) -> str:
    for name in USER_NAMES:
        path = path.replace("{" + name + "}", user)
    for name in THREAD_NAMES:
        path = path.replace("{" + name + "}", thread)
    return path


def graph_body(path: str, conf: dict[str, Any], inp: dict[str, Any] | None = None) -> dict[str, Any]:
    item = {"messages": MSG, **(inp or {})}
    if path.endswith("/batch"):
        return {"inputs": [item], "config": {"configurable": conf}}
    return {"input": item, "config": {"configurable": conf}}


def probes(app: FastAPI, user: str, thread: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Requests naming ``user`` / ``thread`` for every user- or thread-scoped operation of the spec."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    unclassified = []
    for path, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            method = method.upper()
            names = {p["name"] for p in op.get("parameters", []) if p["in"] in ("path", "query")}
            if names & {*USER_NAMES, *THREAD_NAMES}:
                query = {n: user for n in names & set(USER_NAMES) if f"{{{n}}}" not in path}
                loose = {"loose": True} if "requestBody" in op else {}  # no body sent: a 4xx for the owner
                out.append((method, fill(path, user, thread), {"params": query, **loose}))
                if "{" not in path:  # a list: also through the header
                    out.append((method, path, {"headers": {"X-User-ID": user}}))
            elif (method, path) == ("POST", "/v1/chat/completions"):
                body = {"model": "memchat", "messages": MSG}
                out += [(method, path, {"json": {**body, "user": user}}),
                        (method, path, {"json": {**body, "thread_id": thread}}),
                        (method, path, {"json": body, "headers": {"X-Thread-ID": thread}}),
                        (method, path, {"json": body, "headers": {"X-User-ID": user, "X-Thread-ID": "fresh"}})]
            elif method == "POST" and path in RUNS:
                out += [(method, path, {"json": graph_body(path, {"thread_id": thread})}),
                        (method, path, {"json": graph_body(path, {"thread_id": "fresh", "user_id": user})}),
                        (method, path, {"json": graph_body(path, {"thread_id": "fresh"}, {"user_id": user})}),
                        (method, path, {"json": graph_body(path, {}), "headers": {"X-Thread-ID": thread}})]
            elif (method, path) not in UNSCOPED:
                unclassified.append(f"{method} {path}")
    assert not unclassified, f"classify these routes (user/thread-scoped or UNSCOPED): {unclassified}"
    return out


def test_a_tenant_key_acts_for_its_first_user_and_lists_only_its_threads(world: dict[str, Any]) -> None:
    base, keys = world["base"], world["keys"]
    assert chat(base, keys["acme"], "ta").status_code == 200
    assert chat(base, keys["acme"], "ta2", user="a2").status_code == 200
    assert chat(base, keys["bolt"], "tb").status_code == 200
    assert chat(base, ADMIN, "tz", user="z9").status_code == 200
    rows = httpx.get(f"{base}/v1/threads", headers=bearer(keys["acme"]), timeout=30).json()["data"]
    assert {r["id"]: r["users"] for r in rows} == {"ta": ["a1"], "ta2": ["a2"]}
    rows = httpx.get(f"{base}/v1/threads", params={"user": "a2"}, headers=bearer(keys["acme"]), timeout=30)
    assert [r["id"] for r in rows.json()["data"]] == ["ta2"]
    rows = httpx.get(f"{base}/v1/threads", headers=bearer(keys["bolt"]), timeout=30).json()["data"]
    assert [r["id"] for r in rows] == ["tb"]
    rows = httpx.get(f"{base}/v1/threads", headers=bearer(ADMIN), timeout=30).json()["data"]
    assert {r["id"] for r in rows} >= {"ta", "ta2", "tb", "tz"}
    # the graph route defaults to the first user too
    r = httpx.post(f"{base}/graph/invoke", json=graph_body("/graph/invoke", {"thread_id": "tg"}),
                   headers=bearer(keys["bolt"]), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["output"]["user_id"] == "b1"


@pytest.mark.parametrize(("attacker", "victim", "user", "thread"),
                         [("acme", "bolt", "b1", "tb"), ("bolt", "acme", "a2", "ta2"), ("bolt", None, "z9", "tz")])
def test_every_scoped_operation_refuses_another_tenants_resources(
        world: dict[str, Any], attacker: str, victim: str | None, user: str, thread: str) -> None:
    base, keys, app = world["base"], world["keys"], world["app"]
    ops = probes(app, user, thread)
    assert len({(m, p.split("/")[1]) for m, p, _ in ops}) >= 3 and len(ops) > 25
    with httpx.Client(base_url=base, timeout=60) as c:
        for method, path, kw in ops:
            kw = {k: v for k, v in kw.items() if k != "loose"}
            kw["headers"] = {**bearer(keys[attacker]), **kw.get("headers", {})}
            r = c.request(method, path, **kw)
            assert r.status_code == 403, f"{method} {path} {kw}: {r.status_code} {r.text[:300]}"
            assert r.json()["error"]["code"] == "forbidden", (method, path)
        # nothing was touched: the owner (or the admin) still has the thread, untouched
        owner = keys[victim] if victim else ADMIN
        mem = c.get(f"/v1/threads/{thread}/memory", headers=bearer(owner))
        assert mem.status_code == 200 and mem.json()["turns"] == 1, mem.text


def test_owners_and_the_admin_pass_every_scoped_operation(world: dict[str, Any]) -> None:
    base, keys, app = world["base"], world["keys"], world["app"]
    assert chat(base, keys["bolt"], "tb-own").status_code == 200
    ops = probes(app, "b1", "tb-own")
    ops.sort(key=lambda op: op[0] == "DELETE")  # deletions last
    with httpx.Client(base_url=base, timeout=60) as c:
        for method, path, kw in ops:
            loose = kw.pop("loose", False)
            r = c.request(method, path, **{**kw, "headers": {**bearer(keys["bolt"]), **kw.get("headers", {})}})
            ok = r.status_code not in (401, 403) and r.status_code < 500 if loose else r.status_code < 300
            assert ok, f"{method} {path} {kw}: {r.status_code} {r.text[:300]}"
        # the admin may act for anyone
        r = c.get("/v1/threads/ta/memory", headers=bearer(ADMIN))
        assert r.status_code == 200
        assert chat(base, ADMIN, "ta", user="a1").status_code == 200


def test_tenant_login_session_is_scoped_and_revoked_with_its_key(world: dict[str, Any]) -> None:
    base, keys, runner, file = world["base"], world["keys"], world["runner"], world["file"]
    res = runner.invoke(cli_app, ["keys", "add", "carl", "--users", "c1", "--file", str(file)])
    key = res.output.strip().splitlines()[-1]
    assert re.fullmatch(r"mck_[\w-]{40,}", key)
    with httpx.Client(base_url=base, timeout=60) as c:  # picked up without a restart
        r = c.post("/login", json={"key": key})
        assert r.status_code == 200, r.text
        cookie = c.cookies.get("memchat_key")
        assert cookie and key not in cookie and ADMIN not in cookie
        assert c.get("/v1/threads").json()["data"] == []
        assert c.get("/v1/threads/ta/memory").status_code == 403
        assert c.get("/v1/threads", params={"user": "a1"}).status_code == 403
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": MSG},
                      headers={"X-Thread-ID": "tc"}).status_code == 200
        assert [r["users"] for r in c.get("/v1/threads").json()["data"]] == [["c1"]]
        listed = runner.invoke(cli_app, ["keys", "list", "--json", "--file", str(file)])
        assert {k["name"]: k["users"] for k in json.loads(listed.output)} == {
            "acme": ["a1", "a2"], "bolt": ["b1"], "carl": ["c1"]}
        assert runner.invoke(cli_app, ["keys", "revoke", "carl", "--file", str(file)]).exit_code == 0
        assert c.get("/v1/threads").status_code == 401  # its session ends with it
        assert c.get("/v1/threads", headers=bearer(key)).status_code == 401
    assert runner.invoke(cli_app, ["keys", "revoke", "carl", "--file", str(file)]).exit_code == 1
    stored = file.read_text()
    assert all(k not in stored for k in (key, *keys.values())) and "sha256" in stored
    assert file.stat().st_mode & 0o077 == 0


def test_keys_are_never_logged_and_an_invalid_file_accepts_no_tenant_key(
        world: dict[str, Any], caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    base, keys = world["base"], world["keys"]
    with caplog.at_level(logging.DEBUG):
        chat(base, keys["acme"], "ta")
        httpx.get(f"{base}/v1/threads/tb/memory", headers=bearer(keys["acme"]), timeout=30)
        httpx.get(f"{base}/v1/threads", headers=bearer(keys["acme"] + "x"), timeout=30)
    assert caplog.records and not any(k in caplog.text for k in (*keys.values(), ADMIN))
    store = KeyStore(tmp_path / "k.json")
    key = store.add("x", ["u1"])
    assert store.match(key) is not None and store.match(key[:-1]) is None
    (tmp_path / "k.json").write_text("{not json")
    assert store.match(key) is None
    with pytest.raises(ValueError):
        store.add("y", ["u2"])  # an invalid file is not overwritten


def test_failed_logins_are_throttled_per_address(world: dict[str, Any]) -> None:
    base, keys, app = world["base"], world["keys"], world["app"]
    throttle = app.state.login_throttle
    with httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(throttle.limit):
            assert c.post("/login", json={"key": "wrong"}).status_code == 401
        r = c.post("/login", json={"key": keys["acme"]})  # throttled even with a right key
        assert r.status_code == 429 and r.json()["error"]["code"] == "login_throttled"
        assert 1 <= int(r.headers["Retry-After"]) <= throttle.window
        form = c.post("/login", data={"key": ADMIN})
        assert form.status_code == 429 and "Retry-After" in form.headers and "<form" in form.text
        # the API itself is not throttled, and another address may sign in
        assert c.get("/v1/models", headers=bearer(ADMIN)).status_code == 200
        other = httpx.Client(base_url=base, timeout=30, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with other:
            assert other.post("/login", json={"key": ADMIN}).status_code == 200
        real = throttle.clock
        throttle.clock = lambda: real() + throttle.window + 1  # the window slides past the failures
        try:
            assert c.post("/login", json={"key": ADMIN}).status_code == 200
        finally:
            throttle.clock = real
