"""Concurrency: 50 threads × 20 turns in parallel against one server on the stub LLM, with no lost turn and
no cross-talk (every reply and every memory belongs to its thread); and ``memchat bench load`` itself.

The stub echoes the start of the last user message, and every message starts with a marker naming its
thread and turn (see bench/load.py), so each reply must carry its own marker. MEMCHAT_L0_TURNS=20 keeps all
20 turns verbatim (no compaction), so nothing recalled is ever put in front of the message and every reply
can be checked strictly; 50 threads share 10 users, so thread scoping is exercised under load too."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from memchat.bench.load import main, marker, memchat_server, run_load, stub_llm

KEY = "sk-load"
THREADS, TURNS = 50, 20


def test_fifty_threads_twenty_turns_no_lost_turn_no_crosstalk(tmp_path: Path) -> None:
    with stub_llm() as llm, memchat_server(llm, tmp_path, KEY, {"l0_turns": TURNS}, mode="thread") as base:
        t0 = time.perf_counter()
        res = run_load(base, KEY, threads=THREADS, turns=TURNS, users=10, strict=True, run="conc")
        elapsed = time.perf_counter() - t0
        assert res["problems"] == []
        assert res["turns_ok"] == THREADS * TURNS and res["errors"] == 0
        assert res["lost_turns"] == 0 and res["crosstalk"] == 0
        assert res["server"]["llm_calls"] == {"respond": THREADS * TURNS, "summary": 0, "extraction": 0}
        # one thread, by hand: all 20 turns, in order, its own, and the replies echo its own messages
        mem = httpx.get(f"{base}/v1/threads/load-conc-007/memory", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert mem["turns"] == TURNS and mem["user_id"] == "load-conc-u007"
        assert [t["turn"] for t in mem["recent_turns"]] == list(range(1, TURNS + 1))
        for t in mem["recent_turns"]:
            assert t["user"].startswith(marker("conc", 7, t["turn"])) and marker("conc", 7, t["turn"]) in t["assistant"]
        assert mem["memories"] == {"thread": 2 * TURNS, "user": 0}

        # the checker catches cross-talk: replies scripted to carry another thread's marker
        stub_root = llm[: -len("/v1")]
        httpx.post(f"{stub_root}/_control", json={"replies": [f"{marker('neg', 0, 1)} hi"] * 2})
        bad = run_load(base, KEY, threads=2, turns=1, strict=True, run="neg", warmup=False)
        assert bad["crosstalk"] >= 1 and any("carries [neg-t000-n001]" in p for p in bad["problems"])
    print(f"\n50x20: {res['turns_per_s']} turns/s, p50 {res['latency_ms']['p50']} ms, "
          f"p95 {res['latency_ms']['p95']} ms, {elapsed:.0f} s")
    assert elapsed < 240


def test_bench_load_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--threads", "3", "--turns", "2", "--stream", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])
    assert code == 0, res
    assert res["bench"] == "load" and res["turns_ok"] == 6 and res["lost_turns"] == 0 and res["crosstalk"] == 0
    assert res["turns_per_s"] > 0 and res["latency_ms"]["p95"] >= res["latency_ms"]["p50"] > 0
    assert res["ttft_ms"]["p50"] > 0 and res["where"].endswith("memchat serve subprocess")
    assert any("turns per second" in line for line in out)
