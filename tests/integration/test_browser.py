"""The web page in headless Chromium (Playwright): login form, chat, memory panel, screenshot, sign out."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from memchat.chat import MemChat
from memchat.server.app import create_app
from memchat.settings import Settings
from tests.support.serving import STUB_MODEL, run_stub, serve_app

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
KEY = "sk-browser"

playwright_api = pytest.importorskip("playwright.sync_api")


REPLIES = ["Nice to meet you, Zhang Wei! I have noted your order #A-10057.",
           "Order #A-10057 ships within two business days, Zhang Wei; you will get a tracking link by email."]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_stub() as stub:
        httpx.post(f"{stub.root}/_control", json={"replies": REPLIES})
        settings = Settings(llm_base_url=stub, llm_model=STUB_MODEL, data_dir=tmp_path_factory.mktemp("web"),
                            api_key=KEY, _env_file=None)  # type: ignore[call-arg]
        with serve_app(create_app(settings, MemChat(settings))) as url:
            yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed at /usr/bin/chromium")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


def test_chat_page(base: str, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(base) else None)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # without a session the page is a 401 with a small login form (no data, no external assets)
    resp = page.goto(base + "/")
    assert resp is not None and resp.status == 401
    page.wait_for_selector("form#login")
    page.fill("#key", "not-the-key")
    page.click("#sign-in")
    page.wait_for_selector("form#login .err")
    assert "Invalid API key" in page.inner_text(".err")
    assert not [c for c in context.cookies() if c["name"] == "memchat_key"]
    page.fill("#key", KEY)
    page.click("#sign-in")  # POST /login sets the HttpOnly cookie and redirects to /
    page.wait_for_selector("#composer")
    assert page.title() == "memchat"
    cookie = next(c for c in context.cookies() if c["name"] == "memchat_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
    assert "memchat_key" not in page.evaluate("document.cookie")  # not readable by scripts
    assert page.input_value("#api-key") == ""  # the cookie carries the session, no key in the page

    page.fill("#user-id", "zhang")
    page.fill("#system-prompt", "You are a concise support agent for an online shop.")
    page.fill("#message", "My name is Zhang Wei and my order number is #A-10057")
    page.click("#send")
    page.wait_for_selector(".msg.assistant.done", timeout=30_000)
    assert page.inner_text(".msg.assistant.done .content") == REPLIES[0]
    page.wait_for_selector("#slots table", timeout=10_000)
    slots = page.inner_text("#slots")
    assert "Zhang Wei" in slots and "#A-10057" in slots

    page.fill("#message", "When will my order arrive?")
    page.press("#message", "Enter")
    # (locator waits: the page's Content-Security-Policy forbids the eval behind wait_for_function)
    page.locator(".msg.assistant.done").nth(1).wait_for(timeout=30_000)
    playwright_api.expect(page.locator("#mem-turns")).to_contain_text("2 turns", timeout=10_000)
    assert page.locator(".msg.assistant.done .content").nth(1).inner_text() == REPLIES[1]
    assert "cached" in page.locator(".msg.assistant.done .usage").nth(1).inner_text()
    page.wait_for_selector(".sec-row[data-section='head']")
    assert page.locator("#thread-list .thread").count() >= 1
    assert "2 turns" in page.inner_text("#thread-list .thread.active")
    assert page.evaluate("document.querySelector('.sec-row .fill').getBoundingClientRect().width") > 0  # CSP

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    docs = ROOT / "docs" / "web.png"
    if not docs.exists():  # the README screenshot: refreshed by hand (delete it and rerun)
        docs.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, docs)

    # the session is gone: the API answers 401 and the page says so; the API-key field still works
    context.clear_cookies()
    page.fill("#api-key", "wrong-key")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#error-banner:not([hidden])", timeout=10_000)
    assert "401" in page.inner_text("#error-text")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#error-banner", state="hidden", timeout=10_000)
    page.locator("#thread-list .thread").first.wait_for(timeout=10_000)

    # sign out: back to the login form
    page.click("#sign-out")
    page.wait_for_selector("form#login", timeout=10_000)
    assert page.input_value("#key") == ""
    assert not errors, errors
    assert not outside, f"the page fetched non-local resources: {outside}"
    context.close()
