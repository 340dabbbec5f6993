"""Vector memory by URL: the same tests on the embedded persistent store and on a ``chroma run`` server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memchat.backends.embeddings import STEmbeddings, load_embeddings
from memchat.backends.engine import Engine
from memchat.backends.vectorstore import ChromaMemory, Hit, MemoryDoc, make_chroma_client
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.services import ChromaServer, unique_name

pytest_plugins = ["tests.support.services"]  # chroma_server
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def emb() -> STEmbeddings:
    return load_embeddings()


@pytest.fixture(params=["embedded", "server"])
def chroma_url(request: pytest.FixtureRequest) -> str:
    """``""`` (embedded PersistentClient) or the URL of the session's Chroma server."""
    if request.param == "server":
        server: ChromaServer = request.getfixturevalue("chroma_server")
        return server.url
    return ""


@pytest.fixture
def mem(chroma_url: str, tmp_path: Path, emb: STEmbeddings) -> Iterator[ChromaMemory]:
    client = make_chroma_client(chroma_url, tmp_path)
    name = unique_name("mem")
    yield ChromaMemory(client, emb, collection=name)
    client.delete_collection(name)


def _doc(i: str, text: str, user: str, thread: str, seq: int = 1, scope: str = "thread", kind: str = "turn"
         ) -> MemoryDoc:
    return MemoryDoc(id=i, text=text, user_id=user, thread_id=thread, kind=kind, turn=(seq + 1) // 2, seq=seq,
                     scope=scope)


CORPUS = [
    _doc("a1", "My dog Rex loves chasing tennis balls in the park.", "u1", "t1", 1),
    _doc("a2", "We planned a hiking trip to the Alps in July.", "u1", "t1", 2),
    _doc("b1", "My cat Luna sleeps on the keyboard all day.", "u1", "t2", 1),
    _doc("f1", "The user is allergic to shellfish.", "u1", "t1", scope="user", kind="fact"),
    _doc("c1", "My dog Bruno is afraid of tennis balls.", "u2", "t3", 1),
]


def _ids(hits: list[Hit]) -> set[str]:
    return {h.doc.id for h in hits}


def test_search_is_scoped_by_user_and_thread(mem: ChromaMemory) -> None:
    mem.add(CORPUS)
    assert mem.count() == 5
    in_t1 = mem.search("dog tennis balls", "u1", "t1", k=10)
    assert "a1" in _ids(in_t1)
    assert _ids(in_t1) <= {"a1", "a2", "f1"}  # never t2 (other thread) nor u2 (other user)
    top = mem.search("what is the user allergic to?", "u1", "t1", k=10)
    assert top and top[0].doc.id == "f1"  # user-scoped facts are visible in every thread of the user
    in_t2 = mem.search("shellfish allergy", "u1", "t2", k=10)
    assert "f1" in _ids(in_t2) and not _ids(in_t2) & {"a1", "a2", "c1"}
    everywhere = mem.search("pets", "u1", None, k=10)
    assert _ids(everywhere) <= {"a1", "a2", "b1", "f1"} and "b1" in _ids(everywhere)
    other = mem.search("dog tennis balls", "u2", None, k=10)
    assert _ids(other) == {"c1"}
    assert [d.id for d in mem.get_ids(["a2", "missing", "c1"])] == ["a2", "c1"]


def test_upsert_is_idempotent(mem: ChromaMemory) -> None:
    mem.add(CORPUS)
    mem.add(CORPUS)
    assert mem.count() == 5
    mem.add([_doc("a1", "My dog Rex now prefers frisbees.", "u1", "t1", 1)])
    assert mem.count() == 5
    assert mem.get_ids(["a1"])[0].text == "My dog Rex now prefers frisbees."
    hits = mem.search("frisbees", "u1", "t1", k=5)
    assert hits and hits[0].doc.id == "a1"
    assert not any(h.doc.text.endswith("tennis balls in the park.") for h in hits)


def test_delete_thread_keeps_user_facts(mem: ChromaMemory) -> None:
    mem.add(CORPUS)
    assert mem.delete_thread("t1") == 2
    assert {d.id for d in mem.all_docs()} == {"b1", "f1", "c1"}
    assert not _ids(mem.search("hiking trip Alps", "u1", "t1", k=5)) & {"a1", "a2"}
    assert mem.delete_thread("t1") == 0


def test_delete_user(mem: ChromaMemory) -> None:
    mem.add(CORPUS)
    assert mem.delete_user("u1") == 4
    assert {d.id for d in mem.all_docs()} == {"c1"}
    assert mem.search("dog", "u1", None, k=5) == []
    assert _ids(mem.search("dog", "u2", None, k=5)) == {"c1"}


def test_data_survives_a_new_client(chroma_url: str, tmp_path: Path, emb: STEmbeddings) -> None:
    """A restarted process (or another replica) sees what was written, and later writes too."""
    name = unique_name("persist")
    first = ChromaMemory(make_chroma_client(chroma_url, tmp_path), emb, collection=name)
    other = ChromaMemory(make_chroma_client(chroma_url, tmp_path), emb, collection=name)
    try:
        first.add(CORPUS[:2])
        assert "a2" in _ids(other.search("hiking Alps", "u1", "t1", k=5))
        other.add([_doc("a3", "The trip was moved to the Dolomites.", "u1", "t1", 3)])
        assert "a3" in _ids(first.search("Dolomites", "u1", "t1", k=5))  # BM25 cache notices foreign writes
    finally:
        first.client.delete_collection(name)


def test_engine_picks_the_store_from_settings(chroma_server: ChromaServer, tmp_path: Path) -> None:
    """No code change: ``chroma_url`` alone puts the engine's memory on the server."""
    name = unique_name("engine")
    s = Settings(data_dir=tmp_path / "data", chroma_url=chroma_server.url, chroma_collection=name,
                 llm_base_url="http://127.0.0.1:9/v1", llm_model="fake", _env_file=None)  # type: ignore[call-arg]
    eng = Engine(s, llm=ScriptedChatModel())
    mem = eng.memory
    assert isinstance(mem, ChromaMemory)
    try:
        eng.store_docs(CORPUS)
        items = eng.recall("hiking trip", user_id="u1", thread_id="t1", budget_tokens=500)
        assert any(it["id"] == "a2" for it in items)
        assert not (tmp_path / "data" / "chroma").exists()  # nothing embedded was created
        col = mem.client.get_collection(name)
        assert col.count() == 5 and col.metadata["embedder"] == "all-MiniLM-L6-v2"
    finally:
        mem.client.delete_collection(name)
