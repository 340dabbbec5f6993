"""No lost memories: vector-memory writes of acknowledged turns survive a vector-store outage in the durable
outbox (the checkpoint, plus a mark in the key-value store) and are replayed, once, when the store answers."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from memchat.backends.outbox import OUTBOX_NS
from memchat.backends.vectorstore import msg_id
from memchat.chat import MemChat

TURNS = 20


class Outage:
    """Makes the vector store's writes and reads fail (at its interface) while ``down``."""

    def __init__(self, memory: Any) -> None:
        self.down = False
        for name in ("add", "get_ids"):
            real = getattr(memory, name)

            def fail_or(*a: Any, _real: Any = real, **kw: Any) -> Any:
                if self.down:
                    raise ConnectionError("vector store unreachable (injected)")
                return _real(*a, **kw)
            setattr(memory, name, fail_or)


def test_a_vector_store_outage_loses_no_memory_and_duplicates_none(memchat: MemChat) -> None:
    mc = memchat
    outage = Outage(mc.engine.memory)
    mc.outbox.interval = 0.2
    mc.turn("t1", "Hello, I am Ada.", user_id="u1")
    outage.down = True
    for i in range(2, TURNS + 2):  # 20 acknowledged turns while the store is down
        res = mc.turn("t1", f"Note number {i}: the colour of box {i} is blue.", user_id="u1")
        assert res.turn == i and res.reply
    assert mc.outbox.depth() >= 2 * TURNS  # both messages of each turn (and its facts) wait in the outbox
    assert len(mc.state("t1")["outbox"]) >= 2 * TURNS  # ... in the checkpoint
    assert [it.key for it in mc.store.search(OUTBOX_NS)] == ["t1"]  # ... and marked for any replica
    app = __import__("memchat.server.app", fromlist=["create_app"]).create_app(mc.settings, mc, probe=False)
    with TestClient(app, base_url="http://localhost") as client:
        assert _gauge(client.get("/metrics").text, "memchat_outbox_depth") >= 2 * TURNS
        outage.down = False  # the store is back: the background replayer writes the outbox
        deadline = time.monotonic() + 30
        while mc.outbox.depth() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gauge(client.get("/metrics").text, "memchat_outbox_depth") == 0
    assert list(mc.store.search(OUTBOX_NS)) == []
    want = [msg_id("t1", s) for s in range(1, 2 * (TURNS + 1) + 1)]
    assert sorted(d.id for d in mc.engine.memory.get_ids(want)) == sorted(want)  # all 42 messages
    turns = [d for d in mc.engine.memory.all_docs() if d.thread_id == "t1" and d.kind == "turn"]
    assert sorted(d.seq for d in turns) == list(range(1, 2 * (TURNS + 1) + 1))  # none twice
    nxt = mc.turn("t1", "What colour is box 7?", user_id="u1")  # the thread goes on, its outbox back to one turn
    assert nxt.turn == TURNS + 2 and len(mc.state("t1")["outbox"]) <= 3


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    pytest.fail(f"{name} not in /metrics")
