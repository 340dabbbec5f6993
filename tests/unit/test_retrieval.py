"""Retrieval internals: incremental BM25, stemming, score fusion, neighbour scores, budget filling."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from memchat.backends.engine import Engine, short_date
from memchat.backends.memory_api import memory_docs
from memchat.backends.vectorstore import BM25Index, ChromaMemory, MemoryDoc, bm25_tokens, msg_id, stem
from memchat.memory.prompt import memory_line
from tests.support.fakes import ScriptedChatModel


def test_bm25_incremental_matches_formula() -> None:
    idx = BM25Index(k1=1.5, b=0.75)
    docs = [["dog", "park"], ["cat", "sofa", "cat"], ["dog", "beach", "waves", "dog"]]
    for d in docs:
        idx.add(d)
    s = idx.scores(["dog"])
    n, df, avgdl = 3, 2, sum(map(len, docs)) / 3
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    want = [idf * tf / (tf + 1.5 * (1 - 0.75 + 0.75 * len(d) / avgdl)) for tf, d in ((1, docs[0]), (0, docs[1]),
                                                                                    (2, docs[2]))]
    assert s.tolist() == pytest.approx(want, rel=1e-5)
    idx.retire(2, docs[2])  # replaced documents drop out of results and statistics
    s2 = idx.scores(["dog"])
    assert s2[2] == 0.0 and s2[0] > 0
    assert idx.n_alive == 2 and idx.df["dog"] == 1


def test_stemming_and_speaker_tokens() -> None:
    assert stem(["painted", "painting", "agencies", "咖啡"]) == ["paint", "paint", "agenc", "咖啡"]
    doc = MemoryDoc(id="m", text="I painted a sunrise", user_id="u", thread_id="t", kind="turn", speaker="Melanie")
    assert bm25_tokens(doc)[0] == "melani"
    fact = MemoryDoc(id="f", text="Allergic to peanuts", user_id="u", thread_id="t", kind="fact", speaker="user")
    assert "user" not in bm25_tokens(fact)


def test_short_date() -> None:
    assert short_date("2023-05-08 13:56") == "8 May 2023"
    assert short_date("2025-11-29") == "29 Nov 2025"
    assert short_date("yesterday") == "yesterday"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    from memchat.settings import Settings

    s = Settings(data_dir=tmp_path / "d", llm_base_url="http://127.0.0.1:9/v1", llm_model="fake",
                 _env_file=None)  # type: ignore[call-arg]
    return Engine(s, llm=ScriptedChatModel())


def _turns(tid: str, texts: list[tuple[str, str, str]]) -> list[MemoryDoc]:
    return [MemoryDoc(id=msg_id(tid, i), text=t, user_id="u1", thread_id=tid, kind="turn", speaker=sp, turn=i,
                      seq=i, date=d) for i, (sp, t, d) in enumerate(texts, start=1)]


CONV = [
    ("Ana", "Hi Ben, how was your weekend?", "2023-05-08 13:56"),
    ("Ben", "Great, I went hiking in the Dolomites with my sister.", "2023-05-08 13:56"),
    ("Ana", "Wow, which trail did you take?", "2023-05-08 13:56"),
    ("Ben", "The Alta Via 1, it took us four days.", "2023-05-08 13:56"),
    ("Ana", "I bought a new espresso machine yesterday.", "2023-06-01 09:00"),
    ("Ben", "Nice! Which brand is it?", "2023-06-01 09:00"),
    ("Ana", "A small Italian one, it makes great crema.", "2023-06-01 09:00"),
]


def test_recall_neighbours_dates_and_budget(store_engine: Engine) -> None:
    store_engine.store_docs(_turns("t1", CONV))
    items = store_engine.recall("Where did Ben go hiking?", user_id="u1", thread_id="t1", budget_tokens=2000)
    ids = [it["id"] for it in items]
    assert msg_id("t1", 2) in ids
    assert msg_id("t1", 3) in ids  # a neighbour of the hit comes along
    assert [it["seq"] for it in items] == sorted(it["seq"] for it in items)  # conversation order
    # the date is shown once per day, in the short form
    shown = [it["date"] for it in items]
    assert "8 May 2023" in shown and "2023-05-08 13:56" not in shown
    days = [it["shown_date"] for it in items]
    for a, b in zip(items, items[1:]):
        if a["shown_date"] == b["shown_date"]:
            assert b["date"] == ""
    assert days[0] == items[0]["date"]
    # what recall reports as used is what the lines cost once rendered
    for budget in (25, 60, 120, 2000):
        got = store_engine.recall("hiking espresso trail brand", user_id="u1", thread_id="t1", budget_tokens=budget)
        cost = sum(store_engine.tokenizer.count(memory_line(it)) + 1 for it in got)
        assert cost <= budget


def test_recall_excludes_and_scopes(store_engine: Engine) -> None:
    store_engine.store_docs(_turns("t1", CONV))
    store_engine.store_docs([MemoryDoc(id="x", text="Ben went hiking on Mars.", user_id="u2", thread_id="t9", kind="turn",
                                 speaker="Ben", seq=1)])
    items = store_engine.recall("Where did Ben go hiking?", user_id="u1", thread_id="t1", budget_tokens=2000,
                          exclude_ids={msg_id("t1", 2)})
    ids = {it["id"] for it in items}
    assert msg_id("t1", 2) not in ids and "x" not in ids


def test_a_fact_and_its_message_show_once_across_threads(store_engine: Engine) -> None:
    """Recall over all of a user's threads (``thread_id=None``, the stateless route with a user) shows a fact
    stated in a thread as its message, once (it used to show the fact and the message that states it)."""
    docs = memory_docs({}, "tA", "u1", 1, "I am allergic to peanuts. My order number is 55-771.", "Noted.", "")
    store_engine.store_docs(docs)
    assert [d.kind for d in docs].count("fact") == 2
    for tid in (None, "tA"):
        items = store_engine.recall("Am I allergic to anything?", user_id="u1", thread_id=tid, budget_tokens=2000)
        assert [it["text"] for it in items].count("I am allergic to peanuts. My order number is 55-771.") == 1
        assert not [it for it in items if it["text"] == "I am allergic to peanuts."]
    other = store_engine.recall("Am I allergic to anything?", user_id="u1", thread_id="tB", budget_tokens=2000)
    assert [it["text"] for it in other] == ["I am allergic to peanuts."]  # another thread: the fact alone


def test_store_reuses_query_vector_and_sees_foreign_writes(engine: Engine, tmp_path: Path) -> None:
    mem = engine.memory
    assert isinstance(mem, ChromaMemory)
    engine.store_docs(_turns("t1", CONV[:2]))
    engine.recall("I love sourdough bread", user_id="u1", thread_id="t1", budget_tokens=500)
    calls: list[list[str]] = []
    orig = mem.embeddings.embed_documents

    def spy(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return orig(texts)

    mem.embeddings.embed_documents = spy  # type: ignore[method-assign]
    try:
        engine.store_docs([MemoryDoc(id=msg_id("t1", 3), text="I love sourdough bread", user_id="u1",
                                     thread_id="t1", kind="turn", speaker="user", seq=3)])
    finally:
        mem.embeddings.embed_documents = orig  # type: ignore[method-assign]
    assert calls == []  # the query's vector was reused
    other = ChromaMemory(mem.client, mem.embeddings, collection=mem.collection_name)
    other.add([MemoryDoc(id=msg_id("t1", 4), text="The sourdough starter is called Bubbles.", user_id="u1",
                         thread_id="t1", kind="turn", speaker="user", seq=4)])
    hits = mem.search("sourdough starter name", "u1", "t1", k=5)
    assert hits and hits[0].doc.id == msg_id("t1", 4)


def test_a_search_does_not_wait_for_a_write_in_flight(engine: Engine) -> None:
    """The Chroma upsert runs outside the lock every search takes (searches used to queue behind each write),
    and a search meanwhile does not take that write for another process's (no reload of the scopes)."""
    mem = engine.memory
    assert isinstance(mem, ChromaMemory)
    engine.store_docs(_turns("t1", CONV[:4]))
    mem.search("hiking", "u1", "t1", k=5)
    scope = mem.scopes.held("u1")
    landed, release = threading.Event(), threading.Event()
    real = mem.col.upsert

    def slow_upsert(**kw: object) -> None:
        real(**kw)  # in the store (its count moved) ...
        landed.set()
        assert release.wait(30)  # ... but not yet in the scopes

    mem.col.upsert = slow_upsert  # type: ignore[method-assign]
    writer = threading.Thread(target=engine.store_docs, args=(_turns("t1", CONV)[4:],))
    writer.start()
    try:
        assert landed.wait(30)
        t0 = time.monotonic()
        hits = mem.search("espresso machine", "u1", "t1", k=5)  # used to block until the write finished
        assert time.monotonic() - t0 < 5 and writer.is_alive()
        assert mem.scopes.held("u1") is scope  # not taken for a foreign write: nothing reloaded
    finally:
        release.set()
        writer.join(30)
        mem.col.upsert = real  # type: ignore[method-assign]
    assert msg_id("t1", 5) not in {h.doc.id for h in hits}
    assert mem.search("espresso machine", "u1", "t1", k=5)[0].doc.id == msg_id("t1", 5)  # in once written
    assert mem.scopes.held("u1") is scope and mem.scopes.seen == mem.count() and mem.scopes.pending == 0


def test_concurrent_writes_go_in_together(engine: Engine) -> None:
    """Writes arriving while an upsert runs go into the next one together (one Chroma call, not one each),
    the same id from two turns (a user's fact) once; every document lands."""
    mem = engine.memory
    assert isinstance(mem, ChromaMemory)
    engine.store_docs(_turns("t0", CONV[:1]))
    mem.search("hello", "u1", "t0", k=5)
    real, calls, gate = mem.col.upsert, [], threading.Event()

    def upsert(**kw: Any) -> None:
        calls.append(list(kw["ids"]))
        if len(calls) == 1:
            assert gate.wait(30)  # the first write is slow: the others queue meanwhile
        real(**kw)

    mem.col.upsert = upsert  # type: ignore[method-assign]
    fact = MemoryDoc(id="fact:u1:tea", text="I drink green tea every morning.", user_id="u1", thread_id="t1",
                     kind="fact", speaker="user", scope="user")
    batches = [_turns(f"t{i}", CONV[i:i + 1]) + [fact] for i in range(1, 6)]
    writers = [threading.Thread(target=engine.store_docs, args=(b,)) for b in batches]
    try:
        writers[0].start()
        while not calls:
            time.sleep(0.01)
        for w in writers[1:]:
            w.start()
        time.sleep(0.5)
    finally:
        gate.set()
        for w in writers:
            w.join(30)
        mem.col.upsert = real  # type: ignore[method-assign]
    assert len(calls) == 2 and len(calls[1]) == 5  # four writes in one call; the fact once
    ids = {d.id for b in batches for d in b}
    assert {d.id for d in mem.get_ids(sorted(ids))} == ids
    assert mem.scopes.seen == mem.count() and mem.scopes.pending == 0


def test_earlier_question_ranks_below_the_evidence(engine: Engine) -> None:
    """A stored message that only asks holds no answer: asked again, the statements outrank it."""
    asked = ("Ana", "Which trail did Ben take in the Dolomites?", "2023-07-01 10:00")
    engine.store_docs(_turns("t1", [*CONV, asked]))
    items = engine.recall(asked[1], user_id="u1", thread_id="t1", budget_tokens=2000)
    score = {it["seq"]: it["score"] for it in items}
    assert score[2] > score.get(8, 0.0) and score[4] > score.get(8, 0.0)


def test_scopes_are_bounded_by_memories_not_by_a_few_users() -> None:
    """50 conversations used to thrash a 32-user cache: nearly every search reloaded the user's whole scope
    from the store. Now scopes stay while the memories held fit ``max_docs``; beyond it the least recently
    used users go, but never the one just loaded."""
    from memchat.backends.memory_index import Scopes
    from memchat.backends.scopes import _Scope

    loads: list[str] = []

    def rows(ids: list[str], with_vectors: bool) -> list[tuple[MemoryDoc, Any]]:
        loads.append(ids[0].split(":")[0])
        return [(MemoryDoc(id=i, text=f"memory {i}", user_id=i.split(":")[0], thread_id="t", kind="fact"), None)
                for i in ids]

    def scopes(max_docs: int) -> Scopes:
        return Scopes(lambda v: _Scope(4, v), lambda u: [f"{u}:{k}" for k in range(4)], rows, lambda: 0, max_docs)

    many = scopes(100_000)
    for _ in range(3):
        for u in range(50):
            assert len(many.get(f"u{u}")) == 4
    assert len(loads) == 50  # each user loaded once
    loads.clear()
    small = scopes(10)  # room for two users of 4 memories
    for u in ("a", "b", "a", "c", "a", "b"):
        small.get(u)
    assert loads == ["a", "b", "c", "b"]  # c pushed out b (least recently used), a stayed
    assert small.held("a") is not None and small.held("c") is None
    tiny = scopes(1)  # a user larger than the whole bound is still held while in use
    assert len(tiny.get("x")) == 4 and tiny.held("x") is not None


def test_another_process_write_refreshes_one_scope_instead_of_reloading_all(engine: Engine) -> None:
    """With ``memchat serve --workers 2`` the other worker writes all the time. A foreign write used to drop
    every held scope, so nearly every search reloaded its user's memories; now a scope is brought up to date
    with its new ids only, and a memory forgotten elsewhere is never found again."""
    mem = engine.memory
    assert isinstance(mem, ChromaMemory)
    engine.store_docs(_turns("t1", CONV[:4]))
    engine.store_docs([MemoryDoc(id="u2-fact", text="Ben's sister climbs.", user_id="u2", thread_id="t2",
                                 kind="fact", scope="user")])
    mem.search("hiking", "u1", "t1", k=5)
    mem.search("climbs", "u2", "t2", k=5)
    scope1, scope2 = mem.scopes.held("u1"), mem.scopes.held("u2")
    other = ChromaMemory(mem.client, mem.embeddings, collection=mem.collection_name)  # another process
    other.add(_turns("t1", CONV)[4:5])
    read: list[list[str]] = []
    real = mem.scopes._rows

    def spy(ids: list[str], with_vectors: bool) -> Any:
        read.append(list(ids))
        return real(ids, with_vectors)

    mem.scopes._rows = spy
    try:
        assert mem.search("espresso machine", "u1", "t1", k=5)[0].doc.id == msg_id("t1", 5)
        assert mem.search("climbs", "u2", "t2", k=5)[0].doc.id == "u2-fact"
    finally:
        mem.scopes._rows = real
    assert read == [[msg_id("t1", 5)]]  # only the new memory was read; u2's scope was checked, not reloaded
    assert mem.scopes.held("u1") is scope1 and mem.scopes.held("u2") is scope2

    other.delete_user("u1")  # forgotten through the other process
    assert mem.search("climbs", "u2", "t2", k=5)[0].doc.id == "u2-fact"  # notices the write, u1 now stale
    assert mem.scopes.find([msg_id("t1", 2)]) == {}  # a stale scope is not read
    assert mem.search("hiking Dolomites", "u1", "t1", k=5) == []
    assert mem.scopes.held("u1") is not scope1  # it lost memories: loaded afresh


def test_a_forget_elsewhere_is_noticed_when_other_writes_keep_the_count(engine: Engine) -> None:
    """Another process forgets a user and, before this one searches again, stores as many memories as it
    deleted: the collection's count is unchanged, but the forgotten memories must not be served from the
    scope this process holds."""
    mem = engine.memory
    assert isinstance(mem, ChromaMemory)
    engine.store_docs(_turns("t1", CONV[:3]))
    assert mem.search("hiking", "u1", "t1", k=5)  # u1's scope is held here
    other = ChromaMemory(mem.client, mem.embeddings, collection=mem.collection_name)  # another process
    gone = other.delete_user("u1")
    other.add([MemoryDoc(id=f"u2-{i}", text=f"Ben note {i}.", user_id="u2", thread_id="t2", kind="fact",
                         scope="user") for i in range(gone)])
    assert mem.search("hiking Dolomites", "u1", "t1", k=5) == []
    assert mem.get_ids([msg_id("t1", 1)]) == []
