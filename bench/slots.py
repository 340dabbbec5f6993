"""Slot correctness: short conversations through the real graph (scripted LLM); slot recall and false memories.

Cases use the format of ``../shared/data/slots/slots_dev.json``: user ``turns``, then one question
(``ask``) on a fresh thread for a fresh user. ``expect`` entries need a slot of one of ``kinds`` whose
value contains one of ``any`` (case-insensitive) and that also reaches the question's prompt; a
``forbid`` string in any slot value is a false, stale or third-party memory.

    memchat bench slots --data PATH [--holdout 3] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from memchat.bench.common import StubChatModel, bench_settings, emit, progress, temp_data_dir


def score_case(case: dict[str, Any], slots: list[tuple[str, str]], prompt: str) -> dict[str, Any]:
    """Expected slots found (also in the prompt) and forbidden strings present, for one case."""
    prompt = prompt.casefold()
    found, missed, false = 0, [], []
    for ex in case.get("expect", []):
        needles = [a.casefold() for a in ex["any"]]
        hit = any(k in ex["kinds"] and any(n in v for n in needles) for k, v in slots)
        hit = hit and any(n in prompt for n in needles)
        found += hit
        if not hit:
            missed.append(ex["any"][0])
    for f in case.get("forbid", []):
        if any(f.casefold() in v for _, v in slots):
            false.append(f)
    return {"id": case["id"], "expected": len(case.get("expect", [])), "found": found, "missed": missed,
            "false": false, "slots": [f"{k}={v}" for k, v in slots]}


def run_cases(cases: list[dict[str, Any]], *, quiet: bool = False) -> list[dict[str, Any]]:
    """Each case on a fresh thread and user of one MemChat over a temp data dir."""
    from memchat.backends.engine import Engine
    from memchat.chat import MemChat

    results = []
    with temp_data_dir("slots") as d:
        mc = MemChat(engine=Engine(bench_settings(Path(d)), llm=StubChatModel()))
        for i, case in enumerate(progress(cases, total=len(cases), desc="slots", quiet=quiet)):
            thread, user = f"slots-{i}", f"user-{i}"
            for text in [*case["turns"], case["ask"]]:
                mc.turn(thread, text, user_id=user)
            prompt = "".join(str(m.get("content") or "") for m in mc.context(thread).get("messages", []))
            slots = [(str(s.get("kind")), str(s.get("value", "")).casefold()) for s in mc.memory(thread)["slots"]]
            results.append(score_case(case, slots, prompt))
    return results


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Slot recall and the share of cases without a false or stale slot."""
    exp = sum(r["expected"] for r in results)
    found = sum(r["found"] for r in results)
    bad = sum(1 for r in results if r["false"])
    return {"n": len(results), "slot_recall": round(found / max(1, exp), 4),
            "false_free": round(1 - bad / max(1, len(results)), 4)}


def table(groups: dict[str, dict[str, Any]], failing: list[dict[str, Any]]) -> list[Table]:
    """The figures per group, then the failing cases with their slots."""
    t = Table(title="slot correctness")
    for col in ("cases", "n", "slot recall", "false-memory-free"):
        t.add_column(col)
    for name, g in groups.items():
        t.add_row(name, str(g["n"]), f"{g['slot_recall']:.3f}", f"{g['false_free']:.3f}")
    f = Table(title=f"failing cases ({len(failing)})")
    for col in ("id", "missed", "false", "slots"):
        f.add_column(col, overflow="fold")
    for r in failing:
        f.add_row(r["id"], ", ".join(r["missed"]), ", ".join(r["false"]), "; ".join(r["slots"]))
    return [t, f] if failing else [t]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="memchat bench slots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="cases (JSON list in the slots_dev.json format)")
    ap.add_argument("--holdout", type=int, default=0, metavar="K",
                    help="also report every K-th case (held out while tuning) apart from the rest")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    a = ap.parse_args(argv)
    try:
        cases = json.loads(Path(a.data).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {a.data}: {exc}") from exc
    results = run_cases(cases, quiet=a.quiet)
    groups = {"all": summary(results)}
    if a.holdout > 1:
        groups["tuned"] = summary([r for i, r in enumerate(results) if i % a.holdout != a.holdout - 1])
        groups["held out"] = summary([r for i, r in enumerate(results) if i % a.holdout == a.holdout - 1])
    failing = [r for r in results if r["missed"] or r["false"]]
    payload = {"cases": len(results), "slot_recall": groups["all"]["slot_recall"],
               "false_free": groups["all"]["false_free"], "groups": groups, "failing": failing}
    emit(table(groups, failing), payload, a.json)
    return 0
