"""The vector-memory contract, the same assertions on embedded Chroma and on Milvus Lite.

Scoping by user and thread, idempotent ids, delete thread / user, neighbour lookup by sequence,
persistence across clients, embedder-mismatch refusal, re-indexing and copying between the two kinds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memchat.backends.embeddings import load_embeddings
from memchat.backends.engine import Engine
from memchat.backends.reindex import copy_store, reindex
from memchat.backends.stores import collection_name, make_memory
from memchat.backends.vectorstore import EmbedderMismatch, Hit, MemoryDoc, msg_id
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["chroma", "milvus", "milvus-server"])
def vector_store(request: pytest.FixtureRequest) -> str:
    """Chroma; Milvus Lite searched in process (its default); Milvus Lite searched in Milvus (a server's path)."""
    return str(request.param)


def _doc(i: str, text: str, user: str, thread: str, seq: int = 1, scope: str = "thread", kind: str = "turn"
         ) -> MemoryDoc:
    return MemoryDoc(id=i, text=text, user_id=user, thread_id=thread, kind=kind, turn=(seq + 1) // 2, seq=seq,
                     scope=scope, speaker="user", date="2024-05-08 10:00", extra={"source": "test"})


CORPUS = [
    _doc("a1", "My dog Rex loves chasing tennis balls in the park.", "u1", "t1", 1),
    _doc("a2", "We planned a hiking trip to the Alps in July.", "u1", "t1", 2),
    _doc("b1", "My cat Luna sleeps on the keyboard all day.", "u1", "t2", 1),
    _doc("f1", "The user is allergic to shellfish.", "u1", "t1", scope="user", kind="fact"),
    _doc("c1", "My dog Bruno is afraid of tennis balls.", "u2", "t3", 1),
    _doc("q1", 'Quote "marks" and back\\slashes in 用户 ids', 'u"3', 't\\4', 1),
]


def _ids(hits: list[Hit]) -> set[str]:
    return {h.doc.id for h in hits}


def test_search_is_scoped_by_user_and_thread(store_engine: Engine) -> None:
    mem = store_engine.memory
    mem.add(CORPUS)
    assert mem.count() == 6
    in_t1 = mem.search("dog tennis balls", "u1", "t1", k=10)
    assert "a1" in _ids(in_t1) and _ids(in_t1) <= {"a1", "a2", "f1"}  # never t2 nor u2
    top = mem.search("what is the user allergic to?", "u1", "t1", k=10)
    assert top and top[0].doc.id == "f1"  # user-scoped facts are visible in every thread of the user
    in_t2 = mem.search("shellfish allergy", "u1", "t2", k=10)
    assert "f1" in _ids(in_t2) and not _ids(in_t2) & {"a1", "a2", "c1"}
    everywhere = mem.search("pets", "u1", None, k=10)
    assert _ids(everywhere) <= {"a1", "a2", "b1", "f1"} and "b1" in _ids(everywhere)
    assert _ids(mem.search("dog tennis balls", "u2", None, k=10)) == {"c1"}
    assert _ids(mem.search("quote marks", 'u"3', "t\\4", k=10)) == {"q1"}  # ids are quoted, not injected
    assert mem.search("dog", 'u1" or user_id != "', None, k=10) == []
    got = mem.get_ids(["a2", "missing", "c1"])
    assert [d.id for d in got] == ["a2", "c1"]
    a2 = got[0]
    assert (a2.user_id, a2.thread_id, a2.seq, a2.turn, a2.scope, a2.date, a2.extra) == (
        "u1", "t1", 2, 1, "thread", "2024-05-08 10:00", {"source": "test"})


def test_upsert_is_idempotent(store_engine: Engine) -> None:
    mem = store_engine.memory
    mem.add(CORPUS)
    mem.add(CORPUS)
    assert mem.count() == 6
    mem.add([_doc("a1", "My dog Rex now prefers frisbees.", "u1", "t1", 1)])
    assert mem.count() == 6
    assert mem.get_ids(["a1"])[0].text == "My dog Rex now prefers frisbees."
    hits = mem.search("frisbees", "u1", "t1", k=5)
    assert hits and hits[0].doc.id == "a1" and hits[0].bm25
    assert not any(h.doc.text.endswith("tennis balls in the park.") for h in hits)


def test_delete_thread_and_user(store_engine: Engine) -> None:
    mem = store_engine.memory
    mem.add(CORPUS)
    assert mem.scope_counts("t1", "u1") == {"thread": 2, "user": 1}
    assert mem.scope_counts("t\\4", 'u"3') == {"thread": 1, "user": 0}
    assert mem.delete_thread("t1") == 2
    assert mem.scope_counts("t1", "u1") == {"thread": 0, "user": 1}
    assert {d.id for d in mem.all_docs()} == {"b1", "f1", "c1", "q1"}
    assert not _ids(mem.search("hiking trip Alps", "u1", "t1", k=5)) & {"a1", "a2"}
    assert mem.delete_thread("t1") == 0
    assert mem.delete_user("u1") == 2
    assert {d.id for d in mem.all_docs()} == {"c1", "q1"}
    assert mem.search("cat keyboard", "u1", None, k=5) == []
    assert _ids(mem.search("dog", "u2", None, k=5)) == {"c1"}


def test_recall_adds_neighbours_by_sequence(store_engine: Engine) -> None:
    turns = ["I adopted a puppy last week.", "What breed is it?", "A beagle named Biscuit.", "Cute!",
             "Biscuit chewed my slippers.", "Oh no."]
    store_engine.store_docs([_doc(msg_id("t1", i), t, "u1", "t1", i) for i, t in enumerate(turns, 1)])
    items = store_engine.recall("what breed is the puppy?", user_id="u1", thread_id="t1", budget_tokens=400)
    ids = {it["id"] for it in items}
    assert msg_id("t1", 2) in ids and msg_id("t1", 3) in ids  # the answer is the turn after the match
    assert any(it["neighbour_of"] for it in items)


def test_data_survives_a_new_engine(store_settings: Settings) -> None:
    first = Engine(store_settings, llm=ScriptedChatModel())
    first.store_docs(CORPUS[:2])
    if store_settings.vector_store == "milvus":  # a Lite file is held by one process: a second client shares it
        other = make_memory(store_settings, first.memory.embeddings)  # type: ignore[attr-defined]
    else:
        other = Engine(store_settings, llm=ScriptedChatModel()).memory
    assert "a2" in _ids(other.search("hiking Alps", "u1", "t1", k=5))
    other.add([_doc("a3", "The trip was moved to the Dolomites.", "u1", "t1", 3)])
    assert "a3" in _ids(first.memory.search("Dolomites", "u1", "t1", k=5))  # foreign writes are seen


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.unit.test_embedder import make_small_model

    return make_small_model(tmp_path_factory.mktemp("models") / "minilm-l2-d128")


def test_other_embedder_is_refused_then_reindex_fixes_it(store_settings: Settings, small_model: Path) -> None:
    Engine(store_settings, llm=ScriptedChatModel()).store_docs(CORPUS)
    new_s = store_settings.model_copy(update={"embedding_model": str(small_model)})
    with pytest.raises(EmbedderMismatch, match="memchat reindex"):
        _ = Engine(new_s, llm=ScriptedChatModel()).memory
    assert reindex(new_s, batch=2, progress=False) == len(CORPUS)
    mem = Engine(new_s, llm=ScriptedChatModel()).memory
    assert mem.count() == len(CORPUS) and "minilm-l2-d128" in mem.describe()
    assert {d.id: d.text for d in mem.all_docs()} == {d.id: d.text for d in CORPUS}
    assert "a2" in _ids(mem.search("hiking trip", "u1", "t1", k=3))
    with pytest.raises(EmbedderMismatch):  # and now the old embedder is the stranger
        _ = Engine(store_settings, llm=ScriptedChatModel()).memory


def test_copy_between_store_kinds(store_settings: Settings) -> None:
    """``memchat reindex --from <other kind>``: everything arrives once, scoped as before; the source stays."""
    other_kind = "chroma" if store_settings.vector_store == "milvus" else "milvus"
    source = Engine(store_settings.model_copy(update={"vector_store": other_kind}), llm=ScriptedChatModel())
    source.store_docs(CORPUS)
    emb = load_embeddings()
    assert copy_store(store_settings, other_kind, batch=4, progress=False, embeddings=emb) == len(CORPUS)
    assert copy_store(store_settings, other_kind, progress=False, embeddings=emb) == len(CORPUS)
    mem = Engine(store_settings, llm=ScriptedChatModel()).memory
    assert mem.count() == len(CORPUS) and source.memory.count() == len(CORPUS)
    assert _ids(mem.search("dog tennis balls", "u2", None, k=5)) == {"c1"}
    with pytest.raises(ValueError, match="configured store itself"):
        copy_store(store_settings, store_settings.vector_store, progress=False, embeddings=emb)


def test_check_reports_the_store(store_settings: Settings) -> None:
    from memchat.backends.backend_check import check_vectors

    Engine(store_settings, llm=ScriptedChatModel()).store_docs(CORPUS)
    line = check_vectors(store_settings)
    kind = "Milvus Lite" if store_settings.vector_store == "milvus" else "embedded Chroma"
    assert kind in line and "with 6 memories" in line and "384 dims" in line and "all-MiniLM-L6-v2" in line
    assert f"collection {collection_name(store_settings)!r}" in line
    if store_settings.vector_store == "milvus":  # the same collection as a LangChain vector store
        lc = Engine(store_settings, llm=ScriptedChatModel()).memory.as_langchain()  # type: ignore[attr-defined]
        got = lc.similarity_search("shellfish allergy", k=1, expr='user_id == "u1"')
        assert got[0].page_content == "The user is allergic to shellfish."


def test_check_reports_an_unreachable_milvus(settings: Settings) -> None:
    from memchat.backends.backend_check import check_all
    from tests.support.serving import free_port

    s = settings.model_copy(update={"vector_store": "milvus", "milvus_uri": f"http://127.0.0.1:{free_port()}"})
    vectors = check_all(s, llm=False)[-1]
    assert vectors.name == "vectors" and not vectors.ok
    assert "cannot reach the Milvus server at http://127.0.0.1:" in vectors.detail
    assert "MEMCHAT_MILVUS_URI" in vectors.detail


def test_milvus_without_full_text_search_keeps_bm25_in_process(settings: Settings,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A Milvus older than 2.5 (no BM25 function): no sparse field, memchat's own BM25; same results."""
    import memchat.backends.milvus_store as ms

    monkeypatch.setattr(ms, "full_text_supported", lambda version: False)
    s = settings.model_copy(update={"vector_store": "milvus"})
    mem = Engine(s, llm=ScriptedChatModel()).memory
    assert isinstance(mem, ms.MilvusMemory) and not mem.full_text and mem.local is not None and "no full-text search" in mem.describe()
    mem.add(CORPUS)
    hits = mem.search("Alps hiking", "u1", "t1", k=5)
    assert hits[0].doc.id == "a2" and hits[0].bm25 and _ids(hits) <= {"a1", "a2", "f1"}
    other = make_memory(s, mem.embeddings)  # another process's write is seen (the count changed)
    other.add([_doc("a3", "The trip was moved to the Dolomites.", "u1", "t1", 3)])
    assert mem.search("Dolomites", "u1", "t1", k=5)[0].doc.id == "a3"
    assert mem.delete_user("u1") == 5 and mem.search("Dolomites", "u1", None, k=5) == []


def test_a_date_the_question_names_brings_that_days_memories(store_engine: Engine) -> None:
    """"What did we talk about on 3 June, 2023?" matches no words of that day's memory; the memories stored
    that day are searched on their own too and compete with the overall ranking, on every store."""
    def dated(i: str, text: str, day: str, seq: int) -> MemoryDoc:
        return MemoryDoc(id=i, text=text, user_id="u1", thread_id="t1", kind="turn", seq=seq, speaker="user",
                         date=f"{day} 18:30")
    mem = store_engine.memory
    filler = [dated(f"x{i}", f"We talked about the plans for the weekend, round {i}.", "2023-05-01", i)
              for i in range(30)]
    mem.add([*filler, dated("june", "The new puppy chewed through my charger cable.", "2023-06-03", 40),
             dated("other", "My sister is visiting us next spring.", "2023-06-04", 41)])
    q = "What did we talk about on 3 June, 2023?"
    assert "june" not in _ids(mem.search(q, "u1", "t1", k=10))
    hits = mem.search(q, "u1", "t1", k=10, when=("2023-06-03", "2023-06-03"))
    assert "june" in _ids(hits) and "other" not in _ids(hits)
    items = store_engine.recall(q, user_id="u1", thread_id="t1", budget_tokens=120)
    assert "june" in {it["id"] for it in items}
    assert _ids(mem.search(q, "u1", "t1", k=10, when=("2022-01-01", "2022-01-31"))) == _ids(
        mem.search(q, "u1", "t1", k=10))  # nothing stored in the window: the ranking is unchanged
    assert _ids(mem.search(q, "u2", "t1", k=10, when=("2023-06-03", "2023-06-03"))) == set()  # still scoped
