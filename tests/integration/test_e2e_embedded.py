"""End to end on the real embedded llama.cpp server with the shipped Gemma 3 270M GGUF."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memchat.chat import MemChat
from memchat.settings import Settings

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_three_turns_then_resume_in_new_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = Settings(data_dir=data, llm_base_url="", llm_max_tokens=48, _env_file=None)  # type: ignore[call-arg]
    mc = MemChat(s)
    tokens: list[str] = []
    r1 = mc.turn("demo", "My name is Li Ming", user_id="u", on_token=tokens.append)
    r2 = mc.turn("demo", "I am writing a market report about tea.", user_id="u")
    r3 = mc.turn("demo", "What is my name?", user_id="u")
    assert tokens and "".join(tokens).strip() == r1.reply.strip()
    assert all(r.reply.strip() for r in (r1, r2, r3))
    assert (data / "checkpoints.sqlite").exists()
    assert "Li Ming" in mc.context("demo")["messages"][0]["content"]
    assert r3.context["sections"]["total"] <= s.prompt_limit
    # resume the thread in a new process (the checkpoint survives the restart)
    env = dict(os.environ, MEMCHAT_DATA_DIR=str(data), MEMCHAT_LLM_BASE_URL="", MEMCHAT_LLM_MAX_TOKENS="32")
    out = subprocess.run([sys.executable, "-m", "memchat.cli", "chat", "--thread", "demo", "--user", "u"],
                         input="Do you remember me?\n/memory\n", capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "4 turns" in out.stdout and "Li Ming" in out.stdout and "market report about tea" in out.stdout


def test_quickstart_command(tmp_path: Path) -> None:
    env = dict(os.environ, MEMCHAT_DATA_DIR=str(tmp_path), MEMCHAT_LLM_BASE_URL="", MEMCHAT_LLM_MAX_TOKENS="32")
    cmd = [sys.executable, "-m", "memchat.cli", "chat", "--thread", "demo"]
    first = subprocess.run(cmd, input="My name is Li Ming\nWhat is my name?\n", capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("assistant>") == 2
    replies = [line.split("assistant>", 1)[1].strip() for line in first.stdout.splitlines() if "assistant>" in line]
    assert all(replies), first.stdout
    second = subprocess.run(cmd, input="/memory\n", capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert second.returncode == 0 and "2 turns" in second.stdout
