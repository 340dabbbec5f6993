"""LoCoMo all-evidence recall of the memory engine at a memory-token budget.

``memchat bench locomo --data PATH --budget 2000 [--json] [--limit-conversations N]``
(``--live`` replays the conversations through real turns instead: see ``memchat.bench.locomo_live``.)

Each conversation is fed through the engine's vector memory turn by turn: every utterance is one
stored message (speaker and session date as metadata, ``seq`` incremental so neighbour expansion
works; no LLM extraction). For each question of categories 1–4 the memory context is built exactly
as ``respond`` gets it (``Engine.recall(question, budget_tokens=budget)``), and a question counts
as recalled when **all** its evidence turns (``dia_id``) are in that context. Two baselines at the
same budget: a recency window (the last turns that fit) and plain dense top-k over the raw turns.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from memchat.backends.engine import Engine
from memchat.backends.vectorstore import MemoryDoc, msg_id
from memchat.bench.common import (
    ROOT,
    StubChatModel,
    bench_settings,
    emit,
    mean,
    out_dir,
    parse_overrides,
    plt,
    progress,
    temp_data_dir,
)
from memchat.memory.prompt import memory_line

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "locomo" / "locomo_dev.json"
CATEGORIES = (1, 2, 3, 4)
_METHODS = ("memchat", "recency", "dense")
_EVIDENCE = re.compile(r"D\d+:\d+")


@dataclass
class Utterance:
    dia_id: str
    speaker: str
    text: str
    date: str
    seq: int


@dataclass
class Conversation:
    sample_id: str
    utterances: list[Utterance]
    questions: list[dict[str, Any]] = field(default_factory=list)


def parse_date(raw: str) -> str:
    """LoCoMo's ``1:56 pm on 8 May, 2023`` in the format chat turns are stored with (``%Y-%m-%d %H:%M``)."""
    raw = " ".join(raw.split())
    for fmt in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%I:%M %p on %B %d, %Y"):
        try:
            return datetime.strptime(raw, fmt).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            continue
    return raw


def utterance_text(turn: dict[str, Any]) -> str:
    """The text a chat user would have sent: the utterance plus the caption of a shared photo."""
    text = str(turn.get("text") or "").strip()
    caption = str(turn.get("blip_caption") or "").strip()
    if caption:
        text = f"{text} [shares {caption}]".strip()
    return text


def load(path: Path, limit_conversations: int | None = None) -> list[Conversation]:
    """Read a LoCoMo file (the standard ``locomo10.json`` format)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    convs: list[Conversation] = []
    for sample in data[: limit_conversations or None]:
        conv = sample["conversation"]
        sessions = sorted((int(m.group(1)), k) for k in conv if (m := re.fullmatch(r"session_(\d+)", k)))
        utts: list[Utterance] = []
        for n, key in sessions:
            date = parse_date(str(conv.get(f"session_{n}_date_time") or ""))
            for t in conv[key] or []:
                text = utterance_text(t)
                if text:
                    utts.append(Utterance(dia_id=str(t["dia_id"]), speaker=str(t["speaker"]), text=text, date=date,
                                          seq=len(utts) + 1))
        qs = [q for q in sample.get("qa") or [] if int(q.get("category", 0)) in CATEGORIES]
        convs.append(Conversation(sample_id=str(sample.get("sample_id") or f"conv-{len(convs)}"), utterances=utts,
                                  questions=qs))
    return convs


def evidence_ids(q: dict[str, Any]) -> set[str]:
    """The question's evidence ``dia_id``s (tolerates ``"D1:3; D1:4"`` style entries)."""
    out: set[str] = set()
    for e in q.get("evidence") or []:
        out.update(_EVIDENCE.findall(str(e)))
    return out


def line_cost(eng: Engine, item: dict[str, Any]) -> int:
    """Memory tokens of one rendered line (as ``Engine.recall`` and ``assemble`` count them)."""
    return eng.tokenizer.count(memory_line(item)) + 1


def fill(eng: Engine, items: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """Greedy: take items in order while they fit the budget (skipping those that do not)."""
    out, used = [], 0
    for it in items:
        c = line_cost(eng, it)
        if used + c > budget:
            continue
        out.append(it)
        used += c
    return out


def as_item(u: Utterance, tid: str) -> dict[str, Any]:
    return dict(id=msg_id(tid, u.seq), text=u.text, speaker=u.speaker, kind="turn", date=u.date, seq=u.seq,
                thread_id=tid)


@dataclass
class _Tally:
    """What the questions found, per method and category, and the store and recall timings."""

    hits: dict[str, dict[int, list[bool]]] = field(
        default_factory=lambda: {m: {c: [] for c in CATEGORIES} for m in _METHODS})
    tokens: dict[str, list[int]] = field(default_factory=lambda: {m: [] for m in _METHODS})
    lines: dict[str, list[int]] = field(default_factory=lambda: {m: [] for m in _METHODS})
    dense_uncut_hits: list[bool] = field(default_factory=list)
    dense_uncut_tokens: list[int] = field(default_factory=list)
    recall_s: list[float] = field(default_factory=list)
    unreachable: int = 0
    n_utts: int = 0
    t_store: float = 0.0

    def share(self, name: str, cat: int | None = None) -> float:
        """The share of ``name``'s questions (of category ``cat``, or all) with all their evidence recalled."""
        xs = [x for c in CATEGORIES if cat in (None, c) for x in self.hits[name][c]]
        return round(mean([float(x) for x in xs]), 4)


def run(data: Path, budget: int, limit_conversations: int | None = None, limit_questions: int | None = None,
        dense_k: int = 50, quiet: bool = False, plot: bool = True,
        settings_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the benchmark and return the JSON payload."""
    convs = load(data, limit_conversations)
    tally = _Tally()
    with temp_data_dir("locomo") as tmp:
        settings = bench_settings(tmp, **(settings_overrides or {}))
        eng = Engine(settings, llm=StubChatModel())
        mem: Any = eng.memory
        for conv in convs:
            _conversation(eng, mem, conv, tally, budget=budget, limit_questions=limit_questions, dense_k=dense_k,
                          quiet=quiet)
    payload = _payload(tally, settings.vector_store, budget=budget, dense_k=dense_k,
                       settings_overrides=settings_overrides, conversations=len(convs))
    if plot and payload["questions"]:
        payload["plot"] = str(_plot(payload))
    return payload


def _conversation(eng: Engine, mem: Any, conv: Conversation, tally: _Tally, *, budget: int,
                  limit_questions: int | None, dense_k: int, quiet: bool) -> None:
    """Store one conversation's utterances, then ask its questions of the engine and the two baselines."""
    tid = uid = conv.sample_id
    by_seq = {u.seq: u for u in conv.utterances}
    id_to_dia = {msg_id(tid, u.seq): u.dia_id for u in conv.utterances}
    known = {u.dia_id for u in conv.utterances}
    t0 = time.perf_counter()
    for u in progress(conv.utterances, desc=f"store {tid}", quiet=quiet):
        eng.store_docs([MemoryDoc(id=msg_id(tid, u.seq), text=u.text, user_id=uid, thread_id=tid,
                                  kind="turn", speaker=u.speaker, turn=u.seq, seq=u.seq, date=u.date)])
    tally.t_store += time.perf_counter() - t0
    tally.n_utts += len(conv.utterances)
    recency = fill(eng, [as_item(by_seq[s], tid) for s in sorted(by_seq, reverse=True)], budget)
    qs = conv.questions[: limit_questions or None]
    for q in progress(qs, desc=f"ask {tid}", quiet=quiet):
        ev = evidence_ids(q)
        cat = int(q["category"])
        if not ev <= known:
            tally.unreachable += 1
        t0 = time.perf_counter()
        items = eng.recall(str(q["question"]), user_id=uid, thread_id=tid, budget_tokens=budget)
        tally.recall_s.append(time.perf_counter() - t0)
        dense = [as_item(by_seq[d.seq], tid) for d, _ in mem.dense(str(q["question"]), uid, tid, dense_k)
                 if d.seq in by_seq]
        dense_cut = fill(eng, dense, budget)
        for name, chosen in (("memchat", items), ("recency", recency), ("dense", dense_cut)):
            got = {id_to_dia.get(str(it["id"]), "") for it in chosen}
            tally.hits[name][cat].append(ev <= got)
            tally.tokens[name].append(sum(line_cost(eng, it) for it in chosen))
            tally.lines[name].append(len(chosen))
        tally.dense_uncut_hits.append(ev <= {id_to_dia.get(str(it["id"]), "") for it in dense})
        tally.dense_uncut_tokens.append(sum(line_cost(eng, it) for it in dense))


def _payload(tally: _Tally, store: str, *, budget: int, dense_k: int, settings_overrides: dict[str, Any] | None,
             conversations: int) -> dict[str, Any]:
    """The JSON payload (without the plot) from what the questions found."""
    share, tokens, hits = tally.share, tally.tokens, tally.hits
    return {
        "overall": share("memchat"),
        "store": store,
        "per_category": {str(c): share("memchat", c) for c in CATEGORIES},
        "mean_memory_tokens": round(mean([float(t) for t in tokens["memchat"]]), 1),
        "baselines": {
            name: {"overall": share(name), "per_category": {str(c): share(name, c) for c in CATEGORIES},
                   "mean_memory_tokens": round(mean([float(t) for t in tokens[name]]), 1)}
            for name in ("recency", "dense")
        },
        "dense_top_k_uncut": {"k": dense_k, "overall": round(mean([float(x) for x in tally.dense_uncut_hits]), 4),
                              "mean_memory_tokens": round(mean([float(t) for t in tally.dense_uncut_tokens]), 1)},
        "budget": budget,
        "settings_overrides": settings_overrides or {},
        "max_memory_tokens": max(tokens["memchat"], default=0),
        "mean_lines": round(mean([float(x) for x in tally.lines["memchat"]]), 1),
        "questions": sum(len(hits["memchat"][c]) for c in CATEGORIES),
        "questions_per_category": {str(c): len(hits["memchat"][c]) for c in CATEGORIES},
        "unreachable_questions": tally.unreachable,
        "conversations": conversations,
        "utterances": tally.n_utts,
        "store_ms_per_utterance": round(1000 * tally.t_store / max(1, tally.n_utts), 2),
        "recall_ms_mean": round(1000 * mean(tally.recall_s), 2),
    }


def _plot(p: dict[str, Any]) -> Path:
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4))
    labels = ["overall"] + [f"cat {c}" for c in CATEGORIES]
    series = {"memchat": [p["overall"]] + [p["per_category"][str(c)] for c in CATEGORIES]}
    for name in ("dense", "recency"):
        b = p["baselines"][name]
        series[name] = [b["overall"]] + [b["per_category"][str(c)] for c in CATEGORIES]
    width = 0.27
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([x + (i - 1) * width for x in range(len(labels))], vals, width, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1)
    ax.axhline(0.85, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylabel("all-evidence recall")
    ax.set_title(f"LoCoMo all-evidence recall at {p['budget']} memory tokens")
    ax.legend()
    fig.tight_layout()
    path = out_dir() / "locomo_recall.png"
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
    return path


def table(p: dict[str, Any]) -> Table:
    t = Table(title=f"LoCoMo all-evidence recall — budget {p['budget']} memory tokens, "
                    f"{p['questions']} questions (cat 1–4), {p['conversations']} conversations")
    t.add_column("method")
    t.add_column("overall", justify="right")
    for c in CATEGORIES:
        t.add_column(f"cat {c} (n={p['questions_per_category'][str(c)]})", justify="right")
    t.add_column("mean memory tokens", justify="right")
    t.add_row("memchat (Engine.recall)", f"{p['overall']:.3f}", *[f"{p['per_category'][str(c)]:.3f}" for c in CATEGORIES],
              f"{p['mean_memory_tokens']:.0f}")
    for name, label in (("dense", "dense top-k cut to budget"), ("recency", "recency window")):
        b = p["baselines"][name]
        t.add_row(label, f"{b['overall']:.3f}", *[f"{b['per_category'][str(c)]:.3f}" for c in CATEGORIES],
                  f"{b['mean_memory_tokens']:.0f}")
    u = p["dense_top_k_uncut"]
    t.add_row(f"(ref) dense top-{u['k']} uncut", f"{u['overall']:.3f}", *[""] * len(CATEGORIES),
              f"{u['mean_memory_tokens']:.0f}")
    return t


def main(argv: list[str]) -> int:
    if "--live" in argv:  # what the model actually sees: the same data through MemChat turns
        from memchat.bench import locomo_live

        return locomo_live.main([a for a in argv if a != "--live"])
    ap = argparse.ArgumentParser(prog="memchat bench locomo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON (locomo10.json format)")
    ap.add_argument("--budget", type=int, default=2000, help="memory-token budget per question")
    ap.add_argument("--limit-conversations", type=int, default=None)
    ap.add_argument("--limit-questions", type=int, default=None, help="questions per conversation (smoke runs)")
    ap.add_argument("--dense-k", type=int, default=50, help="k of the dense baseline")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--store", choices=["chroma", "milvus"], default=None,
                    help="vector store (default: MEMCHAT_VECTOR_STORE, else chroma)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a Settings field for this run (e.g. memory_top_k=30); repeatable")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    a = ap.parse_args(argv)
    if not a.data.is_file():
        ap.error(f"LoCoMo data not found: {a.data} (pass --data PATH)")
    p = run(a.data, a.budget, a.limit_conversations, a.limit_questions, a.dense_k, quiet=a.quiet, plot=not a.no_plot,
            settings_overrides={**parse_overrides(a.set), **({"vector_store": a.store} if a.store else {})})
    target = "met" if p["overall"] >= 0.85 and p["mean_memory_tokens"] <= 2000 else "NOT met"
    notes = [f"target all-evidence recall >= 0.85 at <= 2000 memory tokens: {target} "
             f"(max tokens of one context {p['max_memory_tokens']}; store {p['store_ms_per_utterance']} ms/utterance, "
             f"recall {p['recall_ms_mean']} ms/question)"]
    if p.get("plot"):
        notes.append(f"plot: {p['plot']}")
    emit([table(p)], p, a.json, notes)
    return 0
