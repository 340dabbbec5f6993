"""Checkpoints and the profile/audit store by URL: the same tests on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memchat.backends import persistence
from memchat.backends.engine import Engine
from memchat.backends.persistence import (
    PersistenceError,
    ThreadBusy,
    ThreadLeases,
    is_postgres,
    make_checkpointer,
    make_store,
    redact,
)
from memchat.chat import MemChat
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.services import PostgresServer, free_port

pytest_plugins = ["tests.support.services"]  # postgres_server, pg_url
pytestmark = pytest.mark.timeout(120)


def _settings(tmp_path: Path, checkpoint_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", checkpoint_url=checkpoint_url, llm_base_url="http://127.0.0.1:9/v1",
                    llm_model="fake", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings whose checkpoints and store are in SQLite (default path) or in a fresh PostgreSQL database."""
    if request.param == "postgres":
        return _settings(tmp_path, request.getfixturevalue("pg_url"))
    return _settings(tmp_path, "")


class Chats:
    """Makes MemChats over one settings object (each a simulated process) and closes their pools."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.made: list[MemChat] = []

    def new(self, llm: ScriptedChatModel | None = None) -> MemChat:
        mc = MemChat(engine=Engine(self.settings, llm=llm or ScriptedChatModel()))
        self.made.append(mc)
        return mc

    def close(self) -> None:
        for mc in self.made:
            persistence.close(mc.checkpointer)
            persistence.close(mc.store)


@pytest.fixture
def chats(backend: Settings) -> Iterator[Chats]:
    c = Chats(backend)
    yield c
    c.close()


def _prompt_text(llm: ScriptedChatModel) -> str:
    kind, messages = [c for c in llm.calls if c[0] == "respond"][-1]
    return "\n".join(str(m.content) for m in messages)


def test_backend_chosen_by_url(backend: Settings) -> None:
    saver = make_checkpointer(backend)
    store = make_store(backend)
    try:
        expected = "Postgres" if is_postgres(backend) else "Sqlite"
        assert type(saver).__name__ == f"{expected}Saver"
        assert type(store).__name__ == f"{expected}Store"
    finally:
        persistence.close(saver)
        persistence.close(store)


def test_thread_continues_after_restart(chats: Chats) -> None:
    first = chats.new()
    first.turn("t1", "My name is Alice. I am allergic to peanuts.", user_id="u1")
    first.turn("t1", "What should I cook tonight?", user_id="u1")
    chats.close()  # the process goes away

    llm = ScriptedChatModel()
    second = chats.new(llm)
    mem = second.memory("t1")
    assert mem["turns"] == 2
    assert {s["key"].split(":", 1)[-1]: s["value"] for s in mem["slots"]}.get("name") == "Alice"
    result = second.turn("t1", "Remind me what I told you.", user_id="u1")
    assert result.turn == 3
    prompt = _prompt_text(llm)
    assert "Alice" in prompt and "peanuts" in prompt and "What should I cook tonight?" in prompt
    assert [t["id"] for t in second.threads()] == ["t1"]
    assert second.threads()[0]["turns"] == 3


def test_profile_follows_user_to_new_thread(chats: Chats) -> None:
    chats.new().turn("t1", "My name is Bob and I live in Lisbon.", user_id="u2")
    chats.close()
    mc = chats.new()
    mc.turn("t2", "Hello again.", user_id="u2")
    values = {s["key"].split(":", 1)[-1]: s["value"] for s in mc.memory("t2")["slots"]}
    assert values.get("name") == "Bob" and values.get("location") == "Lisbon"


def test_delete_thread(chats: Chats) -> None:
    mc = chats.new()
    mc.turn("keep", "My name is Carol.", user_id="u3")
    mc.turn("drop", "I am allergic to cats.", user_id="u3")
    out = mc.delete_thread("drop")
    assert out["deleted"] is True and out["memories_removed"] >= 2
    again = chats.new()
    assert again.state("drop") == {}
    assert again.checkpointer.get_tuple(again.config("drop")) is None  # type: ignore[union-attr]
    assert again.memory("keep")["turns"] == 1
    assert [t["id"] for t in again.threads()] == ["keep"]
    assert again.delete_thread("never-existed")["deleted"] is False


def test_store_profile_and_audit(chats: Chats) -> None:
    mc = chats.new()
    mc.turn("t1", "My name is Dana. I live in Porto.", user_id="u4")
    mc.turn("t1", "Actually, my name is Dana Smith.", user_id="u4")
    audit = mc.audit(user_id="u4")
    keys = {(row["key"].split(":", 1)[-1], row["action"]) for row in audit}
    assert ("name", "set") in keys and ("location", "set") in keys
    assert any(row["key"].endswith("name") and row["action"] in ("corrected", "set") and row["turn"] == 2
               for row in audit)
    assert mc.audit(thread_id="t1", user_id="u4") == audit

    # the raw store API on this backend
    store = mc.store
    assert store is not None
    store.put(("memchat", "test", "u4"), "k", {"v": 1})
    assert store.get(("memchat", "test", "u4"), "k").value == {"v": 1}  # type: ignore[union-attr]
    assert [it.key for it in store.search(("memchat", "test"))] == ["k"]

    gone = mc.delete_user("u4")
    assert gone["threads_deleted"] == ["t1"]
    fresh = chats.new()
    assert fresh.audit(user_id="u4") == []
    assert fresh.store.search(("memchat", "profile", "u4")) == []  # type: ignore[union-attr]


def test_two_processes_alternate_on_one_thread(chats: Chats) -> None:
    a, b = chats.new(), chats.new()
    for i in range(1, 7):
        mc = a if i % 2 else b
        text = "My order number is A-778. I work as a pilot." if i == 1 else f"Message number {i}."
        assert mc.turn("shared", text, user_id="u5").turn == i
    for mc in (a, b):
        mem = mc.memory("shared")
        assert mem["turns"] == 6
        values = {s["key"].split(":", 1)[-1]: s["value"] for s in mem["slots"]}
        assert values.get("order_number") == "A-778" and values.get("occupation") == "pilot"


def test_an_idempotency_key_is_honoured_by_another_process(chats: Chats) -> None:
    """The result of a keyed turn lives in the shared checkpoint: a retry on another replica replays it."""
    a, b = chats.new(), chats.new()
    first = a.turn("keyed", "Book a table for two.", user_id="u6", idempotency_key="k-1", receipt={"id": "c-1"})
    again = b.turn("keyed", "Book a table for two.", user_id="u6", idempotency_key="k-1", receipt={"id": "c-2"})
    assert not first.replayed and again.replayed
    assert (again.reply, again.turn, again.receipt["id"]) == (first.reply, 1, "c-1")
    assert b.memory("keyed")["turns"] == 1


# --------------------------------------------------------------------------- PostgreSQL only


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMCHAT_CHECKPOINT_URL", "postgresql://memchat:secret@db:5432/memchat")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert is_postgres(s)
    assert redact(s.checkpoint_url) == "postgresql://memchat:***@db:5432/memchat"
    monkeypatch.setenv("MEMCHAT_CHECKPOINT_URL", "postgresql+psycopg://u@db/m")
    assert is_postgres(Settings(_env_file=None))  # type: ignore[call-arg]
    assert persistence.postgres_dsn("postgresql+psycopg://u@db/m") == "postgresql://u@db/m"
    monkeypatch.setenv("MEMCHAT_CHECKPOINT_URL", "/var/lib/memchat/cp.sqlite")
    assert not is_postgres(Settings(_env_file=None))  # type: ignore[call-arg]


def test_sqlite_path_url(tmp_path: Path) -> None:
    s = _settings(tmp_path, f"sqlite:///{tmp_path}/elsewhere/cp.sqlite")
    saver, store = make_checkpointer(s), make_store(s)
    try:
        assert (tmp_path / "elsewhere" / "cp.sqlite").exists()
        assert (tmp_path / "elsewhere" / "cp.store.sqlite").exists()
    finally:
        persistence.close(saver)
        persistence.close(store)


def test_unreachable_postgres_is_a_clear_error(tmp_path: Path, postgres_server: PostgresServer) -> None:
    bad = _settings(tmp_path, f"postgresql://memchat:hunter2@127.0.0.1:{free_port()}/memchat")
    with pytest.raises(PersistenceError) as info:
        make_checkpointer(bad)
    msg = str(info.value)
    assert "cannot connect to PostgreSQL" in msg and "MEMCHAT_CHECKPOINT_URL" in msg
    assert "hunter2" not in msg and "***" in msg

    missing = _settings(tmp_path, postgres_server.url_for("no_such_db"))
    with pytest.raises(PersistenceError, match="no_such_db"):
        make_store(missing)


def test_concurrent_setup_on_a_fresh_database(tmp_path: Path, pg_url: str) -> None:
    """Replicas starting together must not race on schema migrations."""
    s = _settings(tmp_path, pg_url)
    made: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start(kind: str) -> None:
        try:
            barrier.wait(10)
            made.append(make_checkpointer(s) if kind == "cp" else make_store(s))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(k,)) for k in ["cp", "store"] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for obj in made:
        persistence.close(obj)
    assert errors == []
    assert len(made) == 6


# --------------------------------------------------------------------------- one turn at a time per thread


def _overlaps(spans: list[tuple[float, float]]) -> bool:
    spans = sorted(spans)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_thread_leases_exclude_across_processes(backend: Settings) -> None:
    """Two lease holders (as two replicas would have) never hold one thread at once."""
    a, b = ThreadLeases(backend), ThreadLeases(backend)
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def turn(leases: ThreadLeases) -> None:
        try:
            for _ in range(3):
                with leases.hold("shared"):
                    t0 = time.monotonic()
                    time.sleep(0.05)
                    spans.append((t0, time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    try:
        workers = [threading.Thread(target=turn, args=(x,)) for x in (a, b, a, b)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert errors == [] and len(spans) == 12
        assert not _overlaps(spans)
        with a.hold("one"):  # another thread is not blocked
            t0 = time.monotonic()
            with b.hold("two"):
                assert time.monotonic() - t0 < 1.0
    finally:
        a.close()
        b.close()


def test_thread_busy_after_the_wait(backend: Settings) -> None:
    a, b = ThreadLeases(backend, ttl=1.0), ThreadLeases(backend, ttl=1.0, wait=0.5)
    try:
        with a.hold("busy"):
            time.sleep(1.5)  # longer than the ttl: the holder renews its lease
            with pytest.raises(ThreadBusy, match="busy"):
                with b.hold("busy"):
                    pass
        with b.hold("busy"):
            pass
    finally:
        a.close()
        b.close()


def test_lease_of_a_dead_replica_expires(pg_url: str, tmp_path: Path) -> None:
    s = _settings(tmp_path, pg_url)
    dead, alive = ThreadLeases(s, ttl=1.0), ThreadLeases(s, ttl=1.0, wait=10)
    try:
        assert dead._try("orphan", "crashed-holder")  # taken, never released nor renewed
        t0 = time.monotonic()
        with alive.hold("orphan"):
            waited = time.monotonic() - t0
        assert 0.5 < waited < 5
    finally:
        dead.close()
        alive.close()
