"""Backups that restore (deploy/README.md "Backups"): with the vector store stopped (turns go on, their
memories wait in the outbox), ``pg_dump -Fc`` and a copy of the vector store's files; restored into a fresh
database (``pg_restore``) and a fresh vector store, the thread continues and the outbox replays the turns the
copy lacks: every message once, none of a turn the restored thread does not have."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from memchat.backends.engine import Engine
from memchat.backends.vectorstore import msg_id
from memchat.chat import MemChat
from memchat.settings import Settings
from tests.graph.test_outbox import Outage
from tests.support.fakes import ScriptedChatModel
from tests.support.services import PostgresServer, pg_bindir

pytest_plugins = ["tests.support.services"]  # pg_url, postgres_server


def _mc(pg_url: str, data: Path) -> MemChat:
    s = Settings(checkpoint_url=pg_url, data_dir=data, llm_base_url="http://127.0.0.1:9/v1", llm_model="fake",
                 llm_extraction="false", background_summaries=False, _env_file=None)  # type: ignore[call-arg]
    return MemChat(engine=Engine(s, llm=ScriptedChatModel()))


def _pg(tool: str, url: str, *args: str) -> None:
    u = urlparse(url)
    bindir = pg_bindir()
    exe = str(bindir / tool) if bindir is not None and (bindir / tool).exists() else tool
    subprocess.run([exe, "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres",
                    "-d", u.path.lstrip("/"), *args], check=True, capture_output=True, timeout=120)


def test_a_backup_restores_into_fresh_stores_and_the_thread_continues(
        pg_url: str, postgres_server: PostgresServer, tmp_path: Path) -> None:
    mc = _mc(pg_url, tmp_path / "a")
    for n in range(1, 4):
        mc.turn("t1", f"Fact {n}: my locker number {n} is {100 + n}.", user_id="u1")
    outage = Outage(mc.engine.memory)
    outage.down = True  # 1. stop the vector store: turns go on, their memories wait in the outbox
    for n in range(4, 6):
        assert mc.turn("t1", f"Fact {n}: my locker number {n} is {100 + n}.", user_id="u1").turn == n
    dump = tmp_path / "memchat.dump"
    _pg("pg_dump", pg_url, "-Fc", "-f", str(dump))  # 2. the database, with the outbox
    shutil.copytree(tmp_path / "a" / "chroma", tmp_path / "backup-chroma")  # 3. the vector store's files
    outage.down = False  # 4. start the vector store again
    mc.turn("t1", "Fact 6: this turn comes after the backup.", user_id="u1")

    fresh = postgres_server.new_database("restore")  # restore into a fresh database and vector store
    _pg("pg_restore", fresh, "--no-owner", str(dump))
    shutil.copytree(tmp_path / "backup-chroma", tmp_path / "b" / "chroma")
    mc2 = _mc(fresh, tmp_path / "b")
    assert mc2.outbox.threads() == ["t1"]  # the restored outbox knows what the copy lacks
    res = mc2.turn("t1", "What is my locker number 4?", user_id="u1")
    assert res.turn == 6  # the thread continues from the backup (turn 6 after it is not in it)
    mem = mc2.engine.memory
    want = [msg_id("t1", s) for s in range(1, 13)]
    assert sorted(d.id for d in mem.get_ids(want)) == sorted(want)  # every message of turns 1-6, written once
    turns = [d for d in mem.all_docs() if d.thread_id == "t1" and d.kind == "turn"]
    assert sorted(d.seq for d in turns) == list(range(1, 13))
    assert all("after the backup" not in d.text for d in turns)  # nothing of a turn the restore does not have
    postgres_server.drop_database(fresh)
