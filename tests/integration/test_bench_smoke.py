"""Smoke runs of the benchmarks on tiny sizes: each prints a table and, with --json, one JSON last line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memchat.bench import locomo, overhead, prefix

pytestmark = pytest.mark.timeout(300)

REAL_LOCOMO = Path(__file__).resolve().parents[3] / "shared" / "data" / "locomo" / "locomo_dev.json"


def last_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = capsys.readouterr().out.strip().splitlines()
    assert out, "no output"
    data = json.loads(out[-1])
    assert isinstance(data, dict)
    return data


def tiny_locomo(path: Path) -> Path:
    """Two short sessions in the locomo10.json format, with questions whose evidence is known."""
    s1 = [("Ana", "Hey Ben! I finally adopted a dog, a beagle called Pixel."),
          ("Ben", "That's great news! How is Pixel settling in?"),
          ("Ana", "He chews everything, yesterday it was my running shoes."),
          ("Ben", "Ha, classic beagle. I started learning the cello last week.")]
    s2 = [("Ben", "My cello teacher says I should practice scales every day."),
          ("Ana", "I took Pixel to the beach in Porto, he loved the waves.", "a photo of a dog on a beach"),
          ("Ben", "Porto is lovely. I am planning a trip to Lisbon in June."),
          ("Ana", "Lisbon in June sounds perfect for you.")]

    def session(n: int, turns: list[tuple[str, ...]]) -> list[dict[str, Any]]:
        out = []
        for i, t in enumerate(turns, start=1):
            d: dict[str, Any] = {"speaker": t[0], "dia_id": f"D{n}:{i}", "text": t[1]}
            if len(t) > 2:
                d["blip_caption"] = t[2]
            out.append(d)
        return out

    sample = {
        "sample_id": "tiny-1",
        "conversation": {"speaker_a": "Ana", "speaker_b": "Ben", "session_1_date_time": "1:56 pm on 8 May, 2023",
                         "session_1": session(1, s1), "session_2_date_time": "10:04 am on 20 May, 2023",
                         "session_2": session(2, s2)},
        "qa": [
            {"question": "What is the name of Ana's dog?", "answer": "Pixel", "evidence": ["D1:1"], "category": 4},
            {"question": "What instrument is Ben learning?", "answer": "cello", "evidence": ["D1:4", "D2:1"],
             "category": 1},
            {"question": "When did Ana take Pixel to the beach?", "answer": "May 2023", "evidence": ["D2:2"],
             "category": 2},
            {"question": "Would Ben enjoy Portugal?", "answer": "yes", "evidence": ["D2:3"], "category": 3},
            {"question": "Adversarial", "evidence": ["D1:1"], "category": 5},
        ],
    }
    path.write_text(json.dumps([sample]), encoding="utf-8")
    return path


def test_locomo_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_locomo(tmp_path / "tiny.json")
    assert locomo.main(["--data", str(data), "--budget", "2000", "--json", "--quiet", "--no-plot"]) == 0
    p = last_json(capsys)
    assert set(p) >= {"overall", "per_category", "mean_memory_tokens", "baselines"}
    assert set(p["baselines"]) == {"recency", "dense"}
    assert set(p["per_category"]) == {"1", "2", "3", "4"}
    assert p["questions"] == 4  # category 5 is left out
    assert p["overall"] == 1.0  # everything fits in 2000 tokens
    assert p["mean_memory_tokens"] <= 2000


def test_locomo_budget_is_respected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_locomo(tmp_path / "tiny.json")
    assert locomo.main(["--data", str(data), "--budget", "40", "--json", "--quiet", "--no-plot"]) == 0
    p = last_json(capsys)
    assert p["max_memory_tokens"] <= 40
    assert p["baselines"]["recency"]["mean_memory_tokens"] <= 40
    assert 0.0 <= p["overall"] <= 1.0


@pytest.mark.skipif(not REAL_LOCOMO.is_file(), reason="shared LoCoMo data not present")
def test_locomo_real_data_one_conversation(capsys: pytest.CaptureFixture[str]) -> None:
    assert locomo.main(["--data", str(REAL_LOCOMO), "--limit-conversations", "1", "--limit-questions", "12",
                        "--json", "--quiet", "--no-plot"]) == 0
    p = last_json(capsys)
    assert p["conversations"] == 1 and p["questions"] == 12 and p["utterances"] > 300
    assert p["mean_memory_tokens"] <= 2000 and p["max_memory_tokens"] <= 2000
    assert p["overall"] >= p["baselines"]["recency"]["overall"]


def test_prefix_30_turns(capsys: pytest.CaptureFixture[str]) -> None:
    assert prefix.main(["--turns", "30", "--json", "--quiet"]) == 0
    p = last_json(capsys)
    assert p["turns"] == 30
    assert p["respond_calls_per_turn"] == 1.0 and p["max_respond_calls_in_a_turn"] == 1
    assert p["summary_calls_per_turn"] <= 0.25
    assert p["prefix_reuse_max_abs_diff"] < 1e-3  # the graph's own figure matches an independent count
    assert p["prefix_reuse_mean"] > p["naive_reuse_mean"]
    assert p["prompt_tokens"]["max"] <= p["prompt_tokens"]["limit"]
    assert Path(p["plot"]).is_file()


def test_overhead_small(capsys: pytest.CaptureFixture[str]) -> None:
    assert overhead.main(["--sizes", "100,300", "--turns", "8", "--warmup", "2", "--json", "--quiet",
                          "--no-plot"]) == 0
    p = last_json(capsys)
    assert set(p["sizes"]) == {"100", "300"}
    for r in p["sizes"].values():
        assert r["stored"] >= 100
        for part in ("rules", "retrieve", "assemble", "store", "total"):
            assert r[part]["p95"] >= r[part]["p50"] >= 0
    assert p["largest"] == 300 and "p95_ms_at_largest" in p


@pytest.mark.e2e
def test_ttft_few_turns(capsys: pytest.CaptureFixture[str]) -> None:
    from memchat.bench import ttft

    assert ttft.main(["--turns", "4", "--max-tokens", "8", "--json", "--quiet", "--no-plot"]) == 0
    p = last_json(capsys)
    assert p["turns"] == 4
    assert p["memchat_ttft_s_last"] > 0 and p["naive_ttft_s_last"] > 0


def test_locomo_live_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_locomo(tmp_path / "tiny.json")
    assert locomo.main(["--live", "--data", str(data), "--json", "--quiet", "--no-plot"]) == 0
    p = last_json(capsys)
    assert p["turns"] == 8 + 4 and p["questions"] == 4  # 8 utterances replayed, 4 questions of cat 1-4
    assert set(p["per_category"]) == {"all", "1", "2", "3", "4"}
    assert p["recall"] == 1.0 and p["recall_by_id"] == 1.0  # a short conversation fits in the prompt
    assert p["engine_only"]["recall"] == 1.0
    assert p["llm_calls_per_turn_hot"] >= 1.0 and p["llm_calls_per_turn_off_path"] == 0
    # the radix stub: later turns reuse the earlier prompt + reply, so uncached < prompt
    assert 0 < p["uncached_per_turn_mean"] < p["prompt_tokens_mean_all_turns"]
    assert p["baselines"]["recent_window"]["prompt_tokens"] > 0


def test_footprint_flat_after_k(capsys: pytest.CaptureFixture[str]) -> None:
    from memchat.bench import footprint

    assert footprint.main(["--turns", "12", "--keep", "3", "--json"]) == 0
    res = last_json(capsys)
    rows = {r["turn"]: r for r in res["rows"]}
    assert [rows[t]["checkpoints"] for t in (1, 2, 5, 10, 12)] == [1, 2, 3, 3, 3]
    assert res["view_bytes"] > 0 and res["meets_target"] and Path(res["plot"]).exists()
