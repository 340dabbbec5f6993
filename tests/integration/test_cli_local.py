"""The CLI (scripted stdin) over the SGLang stub, settings, and the embedded server's error paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memchat.backends.local_server import LLMStartupError, resolve_model_path
from memchat.settings import Settings
from tests.support.sglang_stub import run_stub

ROOT = Path(__file__).resolve().parents[2]
MEMCHAT = [sys.executable, "-m", "memchat.cli"]


def run_cli(args: list[str], stdin: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(MEMCHAT + args, input=stdin, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=180)


def test_help_lists_commands() -> None:
    out = subprocess.run(MEMCHAT + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
    for cmd in ("chat", "serve", "bench", "reindex", "memory"):
        assert cmd in out


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMCHAT_LLM_BASE_URL", "http://h:1/v1/")
    monkeypatch.setenv("MEMCHAT_MEMORY_TOKENS", "1234")
    monkeypatch.setenv("MEMCHAT_DATA_DIR", str(tmp_path))
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.llm_base_url == "http://h:1/v1" and s.memory_tokens == 1234 and not s.embedded
    assert s.data_dir == tmp_path


def test_scripted_chat_continues_across_runs(tmp_path: Path) -> None:
    with run_stub() as url:
        env = dict(os.environ, MEMCHAT_LLM_BASE_URL=str(url), MEMCHAT_DATA_DIR=str(tmp_path / "d"),
                   MEMCHAT_LLM_MODEL="Qwen/Qwen2.5-7B-Instruct")
        r1 = run_cli(["chat", "--thread", "demo"], "My name is Li Ming\nWhat is my name?\n", env)
        assert r1.returncode == 0, r1.stderr
        assert r1.stdout.count("assistant>") == 2 and "Stub reply" in r1.stdout
        r2 = run_cli(["chat", "--thread", "demo"], "/memory\n", env)
        assert r2.returncode == 0, r2.stderr
        assert "2 turns" in r2.stdout and "Li Ming" in r2.stdout


def test_backend_down_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(os.environ, MEMCHAT_LLM_BASE_URL="http://127.0.0.1:9/v1", MEMCHAT_DATA_DIR=str(tmp_path),
               MEMCHAT_LLM_TIMEOUT="3", MEMCHAT_LLM_MAX_RETRIES="0")
    r = run_cli(["chat", "--thread", "x"], "hello\n", env)
    assert r.returncode == 1
    assert "error" in r.stderr.lower() and "Traceback" not in r.stderr + r.stdout


def test_missing_or_broken_model_is_clear(tmp_path: Path) -> None:
    with pytest.raises(LLMStartupError, match="does not exist"):
        resolve_model_path(Settings(local_model=str(tmp_path / "nope.gguf"), _env_file=None))  # type: ignore[call-arg]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(LLMStartupError, match="not a GGUF"):
        resolve_model_path(Settings(local_model=str(bad), _env_file=None))  # type: ignore[call-arg]
    env = dict(os.environ, MEMCHAT_LLM_BASE_URL="", MEMCHAT_LOCAL_MODEL=str(bad), MEMCHAT_DATA_DIR=str(tmp_path))
    r = run_cli(["chat"], "hello\n", env)
    assert r.returncode == 1 and "not a GGUF" in r.stderr and "Traceback" not in r.stderr
