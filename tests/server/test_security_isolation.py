"""Isolation: 20 users with near-identical facts; 1,000+ retrieval probes never return another user's
memory, and thread-scoped memories never cross threads.

Each user i tells thread A "My name is User{i}, my order number is #70{i}..., and I live in {city}" and
"My cat is called {pet}", and tells thread B a thread-only secret ("The secret codeword for this thread is
..."; no first person, so it is never a user-wide fact). Then:

* 300 probes go through the API: a chat turn on a third thread P per user (neutral questions), then that
  thread's ``/memory`` (``retrieved``) and ``/context`` (the whole prompt sent to the LLM) are checked;
* 900 more go to ``Engine.recall`` directly (fast), from threads A, B, P and user-wide, including
  adversarial queries that name other users, their orders, cities, pets and codewords.

A recalled turn must be from the probing thread; a recalled fact must be a sentence this user sent; the
prompt must hold no other user's name, order, city, pet or codeword, and no other thread's secret. Positive
controls make sure recall does find the user's own memories (the test would be empty otherwise).

The module runs on embedded Chroma and on a Milvus Lite file searched in Milvus (user and thread filters
evaluated by Milvus, as on a Milvus server); the 300 API probes run on Chroma only: above the vector store
the route is the same code, and the engine probes (those of 5 users on Milvus: Lite's searches are slow)
and the forgetting test check the store itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from memchat.chat import MemChat
from memchat.server.app import create_app
from memchat.settings import Settings
from tests.support.serving import STUB_MODEL, StubURL, serve_app

KEY = "sk-isolation"
AUTH = {"Authorization": f"Bearer {KEY}"}
N = 20
CITIES = ["Oslo", "Lima", "Quito", "Hanoi", "Dakar", "Perth", "Turin", "Bergen", "Cusco", "Malmo", "Porto",
          "Krakow", "Nagoya", "Tbilisi", "Windhoek", "Zagreb", "Seville", "Tromso", "Ushuaia", "Valletta"]
PETS = ["Mochi", "Pixel", "Biscuit", "Tofu", "Nimbus", "Pepper", "Waffles", "Juniper", "Ziggy", "Marble",
        "Noodle", "Clover", "Sprocket", "Truffle", "Gizmo", "Saffron", "Pumpkin", "Domino", "Kiwi", "Basil"]
WORDS = ["amber", "birch", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "jasper", "kestrel",
         "lagoon", "meadow", "nectar", "onyx", "prism", "quartz", "raven", "sierra", "tundra"]
API_PROBES = ["What is my order number?", "Which city do I live in?", "What is my cat called?", "What is my name?",
              "What is the secret codeword?", "Remind me of my order number and city.", "Who am I?",
              "Where do I live again?", "Tell me the codeword for this thread.", "What do you know about me?",
              "What is the name of my cat?", "Which order did I mention?", "What pet do I have?",
              "Do you remember my city?", "Summarize what I told you."]


@dataclass
class User:
    i: int
    uid: str = ""
    name: str = ""
    order: str = ""
    city: str = ""
    pet: str = ""
    code: str = ""
    sent: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        i = self.i
        self.uid, self.name, self.order = f"iso-user-{i:02d}", f"User{i:02d}", f"#{70100 + i}"
        self.city, self.pet, self.code = CITIES[i], PETS[i], f"codeword-{WORDS[i]}-{i:02d}"

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.name, self.order, self.city, self.pet, self.code)

    def thread(self, kind: str) -> str:
        return f"iso-{kind}-{self.i:02d}"


USERS = [User(i) for i in range(N)]
ALL_MARKERS = {m: u.i for u in USERS for m in u.markers}
MARKER_RE = re.compile("|".join(re.escape(m) for m in sorted(ALL_MARKERS, key=len, reverse=True)))


def foreign(text: str, user: User, *, thread: str | None) -> list[str]:
    """Markers in ``text`` that are not the user's, or the user's thread-B codeword outside thread B."""
    bad = [m for m in MARKER_RE.findall(text) if ALL_MARKERS[m] != user.i]
    if thread is not None and thread != user.thread("b") and user.code in text:
        bad.append(f"{user.code} (thread-scoped to {user.thread('b')})")
    return bad


def check_item(item: dict[str, Any], user: User, thread: str | None) -> None:
    """A recalled memory belongs to the user (facts) or to the probing thread (turns)."""
    text = str(item.get("text", ""))
    assert not foreign(text, user, thread=thread), (user.uid, thread, item)
    if item.get("kind") == "turn":
        own = {user.thread(k) for k in ("a", "b", "p")}
        assert item.get("thread_id") == thread if thread is not None else item.get("thread_id") in own, (thread, item)
        assert str(item.get("id", "")).startswith(f"msg:{item.get('thread_id')}:")
    else:
        assert item.get("kind") == "fact", item
        assert any(text in sent for sent in user.sent), (user.uid, item)  # a sentence this user said


STORES = {"chroma": {"vector_store": "chroma"}, "milvus-server": {"vector_store": "milvus", "milvus_search": "server"}}


@pytest.fixture(scope="module", params=list(STORES))
def mc(request: pytest.FixtureRequest, stub: StubURL, tmp_path_factory: pytest.TempPathFactory) -> MemChat:
    settings = Settings(llm_base_url=stub, llm_model=STUB_MODEL, data_dir=tmp_path_factory.mktemp("iso"), api_key=KEY,
                        llm_max_retries=0, _env_file=None, **STORES[request.param])  # type: ignore[call-arg]
    return MemChat(settings)


@pytest.fixture(scope="module")
def base(mc: MemChat) -> Iterator[str]:
    with serve_app(create_app(mc.settings, mc)) as url:
        yield url


def say(c: httpx.Client, user: User, kind: str, text: str) -> dict[str, Any]:
    user.sent.append(text)
    r = c.post("/v1/chat/completions", headers={"X-Thread-ID": user.thread(kind)},
               json={"model": "memchat", "user": user.uid, "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def told(base: str) -> list[User]:
    """Every user has told thread A their facts and thread B its secret."""
    for user in USERS:
        user.sent.clear()

    def tell(user: User) -> None:
        with httpx.Client(base_url=base, headers=AUTH, timeout=120) as c:
            say(c, user, "a", f"My name is {user.name}, my order number is {user.order}, and I live in {user.city}.")
            say(c, user, "a", f"My cat is called {user.pet}.")
            say(c, user, "b", f"The secret codeword for this thread is {user.code}.")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(tell, USERS))
    return USERS


def test_api_probes_never_cross_users_or_threads(base: str, mc: MemChat, told: list[User]) -> None:
    if mc.settings.vector_store != "chroma":
        pytest.skip("the API above the store is the same code; the engine probes cover this store")
    recalled_order: set[int] = set()  # users whose order-number fact was recalled by some probe
    items_checked: list[int] = []
    done: list[int] = []  # probes per user (appended by the workers)

    def probe(user: User) -> None:
        p = user.thread("p")
        with httpx.Client(base_url=base, headers=AUTH, timeout=120) as c:
            for q in API_PROBES:
                reply = say(c, user, "p", q)["choices"][0]["message"]["content"]
                assert not foreign(reply, user, thread=p), (user.uid, q, reply)
                mem = c.get(f"/v1/threads/{p}/memory").json()
                for item in mem["retrieved"]:
                    check_item(item, user, p)
                items_checked.append(len(mem["retrieved"]))
                if any(user.order in str(it.get("text")) for it in mem["retrieved"]):
                    recalled_order.add(user.i)  # (once shown, a memory stays in the window: not recalled again)
                prompt = "\n".join(m["content"] for m in c.get(f"/v1/threads/{p}/context").json()["messages"])
                assert not foreign(prompt, user, thread=p), (user.uid, q, foreign(prompt, user, thread=p))
                assert user.name in prompt and user.order in prompt  # the user's own profile slots, in the head
            rows = c.get("/v1/threads", params={"user": user.uid}).json()["data"]
            assert sorted(r["id"] for r in rows) == sorted(user.thread(k) for k in "abp")
        done.append(len(API_PROBES))

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(probe, told))
    assert sum(done) == N * len(API_PROBES) == 300
    assert len(recalled_order) == N  # recall does find each user's own fact: the probes are not empty
    assert sum(items_checked) >= 2 * N


def test_engine_probes_never_cross_users_or_threads(mc: MemChat, told: list[User]) -> None:
    eng = mc.engine
    probes = 0
    users = told if mc.settings.vector_store == "chroma" else told[::4]  # Lite searches in Milvus slowly: 5 of 20
    for user in users:
        other = USERS[(user.i + 7) % N]
        queries = ["What is my order number?", "secret codeword for this thread", "my cat", "where do I live",
                   f"What is the order number of {other.name}?", f"order {other.order}", f"I live in {other.city}",
                   f"My cat is called {other.pet}", f"The secret codeword is {other.code}",
                   f"My name is {other.name}"]
        for thread in (user.thread("a"), user.thread("b"), user.thread("p"), None):
            for q in queries:
                items = eng.recall(q, user_id=user.uid, thread_id=thread, budget_tokens=2000)
                for item in items:
                    check_item(item, user, thread)
                probes += 1
        # positive controls: the user's own memories are found, thread secrets only in their thread
        def texts(q: str, thread: str | None, uid: str = user.uid) -> str:
            return " ".join(str(i["text"]) for i in eng.recall(q, user_id=uid, thread_id=thread, budget_tokens=2000))

        assert user.order in texts("What is my order number?", user.thread("p"))
        assert user.pet in texts("What is my cat called?", user.thread("b"))
        assert user.code in texts("secret codeword for this thread", user.thread("b"))
        assert user.code not in texts("secret codeword for this thread", user.thread("a"))
        assert user.code in texts("secret codeword for this thread", None)  # user-wide view
        probes += 5
    assert probes == len(users) * (4 * 10 + 5) and len(users) in (N, N // 4)


def test_forgetting_a_user_leaves_the_others(base: str, mc: MemChat, told: list[User]) -> None:
    gone, kept = told[0], told[1]
    before = httpx.get(f"{base}/v1/threads/{kept.thread('a')}/memory", headers=AUTH).json()["memories"]
    threads = {row["id"] for row in httpx.get(f"{base}/v1/threads", params={"user": gone.uid}, headers=AUTH).json()["data"]}
    assert threads >= {gone.thread("a"), gone.thread("b")}  # and thread P where the API probes ran
    r = httpx.delete(f"{base}/v1/users/{gone.uid}/memory", headers=AUTH, timeout=60).json()
    assert sorted(r["threads_deleted"]) == sorted(threads) and r["memories_removed"] > 0
    for tid in threads:
        assert httpx.get(f"{base}/v1/threads/{tid}/memory", headers=AUTH).status_code == 404
    assert mc.engine.recall("What is my order number?", user_id=gone.uid, thread_id=None, budget_tokens=2000) == []
    assert httpx.get(f"{base}/v1/threads/{kept.thread('a')}/memory", headers=AUTH).json()["memories"] == before
    texts = " ".join(i["text"] for i in mc.engine.recall("What is my order number?", user_id=kept.uid,
                                                           thread_id=None, budget_tokens=2000))
    assert kept.order in texts
