"""Checkpoint storage per thread over turns: does a thread's storage stop growing?

``memchat bench footprint [--turns 1000] [--keep K] [--checkpoint-url postgresql://...] [--json]``

One thread runs ``--turns`` turns through ``MemChat`` (the same graph, checkpointer and store as ``memchat
serve``; a stub chat model in process, so only memchat's own state is measured). At checkpoints along the way
it reads what the thread holds in the checkpointer (checkpoint rows, metadata, channel blobs, pending
writes) and reports bytes per thread and bytes written per turn over the last interval, plus the last-turn
view kept in the store (the last prompt and retrievals for the inspector; one entry per thread). ``--keep``
sets ``MEMCHAT_CHECKPOINT_KEEP`` (0 = keep every checkpoint, the behaviour before pruning). Table, a PNG in
``bench/out/footprint.png`` and (``--json``) one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from memchat.backends.checkpoint_prune import thread_bytes
from memchat.backends.views import LAST_TURN_NS
from memchat.bench.common import StubChatModel, bench_settings, emit, out_dir, plt, progress, temp_data_dir
from memchat.bench.synth import conversation

THREAD = "footprint"
TARGET_BYTES = 2 * 1024 * 1024


def marks(turns: int) -> list[int]:
    """Turns at which the thread is measured (denser at the start)."""
    out = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000) if t <= turns]
    out += list(range(1000 + 250, turns + 1, 250))
    if turns not in out:
        out.append(turns)
    return sorted(set(out))


def _view_bytes(store: Any) -> int:
    item = store.get(LAST_TURN_NS, THREAD) if store is not None else None
    return len(json.dumps(item.value, ensure_ascii=False).encode()) if item is not None else 0


def run(turns: int, keep: int, checkpoint_url: str = "", quiet: bool = False) -> dict[str, Any]:
    """Run the thread and measure; the result dict."""
    from memchat.backends.engine import Engine
    from memchat.chat import MemChat

    rows: list[dict[str, Any]] = []
    with temp_data_dir("footprint") as d:
        settings = bench_settings(Path(d), checkpoint_keep=keep, checkpoint_url=checkpoint_url)
        mc = MemChat(engine=Engine(settings, llm=StubChatModel(reply_words=40)))
        if checkpoint_url:
            mc.delete_thread(THREAD)
        msgs = conversation(turns)
        want = set(marks(turns))
        last_turn, last_bytes, t0 = 0, 0, time.perf_counter()
        for n, text in enumerate(progress(msgs, total=turns, desc="turns", quiet=quiet), start=1):
            mc.turn(THREAD, text, user_id="footprint-user")
            if n in want:
                held = thread_bytes(mc.checkpointer, THREAD)
                rows.append({"turn": n, "checkpoints": held["checkpoints"], "thread_bytes": held["bytes"],
                             "bytes_per_turn": round((held["bytes"] - last_bytes) / (n - last_turn)),
                             "view_bytes": _view_bytes(mc.store)})
                last_turn, last_bytes = n, held["bytes"]
        wall = time.perf_counter() - t0
        kind = "postgres" if checkpoint_url else "sqlite"
        if checkpoint_url:
            mc.delete_thread(THREAD)
    final = rows[-1]
    return {"bench": "footprint", "backend": kind, "turns": turns, "keep": keep, "rows": rows,
            "thread_bytes_final": final["thread_bytes"], "checkpoints_final": final["checkpoints"],
            "bytes_per_checkpoint": round(final["thread_bytes"] / max(1, final["checkpoints"])),
            "view_bytes": final["view_bytes"], "target_bytes": TARGET_BYTES,
            "meets_target": final["thread_bytes"] + final["view_bytes"] <= TARGET_BYTES,
            "wall_s": round(wall, 1)}


def table(res: dict[str, Any]) -> Table:
    """The rows as a rich table."""
    keep = res["keep"] or "all"
    t = Table(title=f"memchat bench footprint — one thread, {res['turns']} turns, {res['backend']}, keep {keep}")
    for col in ("turn", "checkpoints", "bytes per thread", "bytes per turn (interval)", "last-turn view"):
        t.add_column(col, justify="right")
    for r in res["rows"]:
        t.add_row(str(r["turn"]), str(r["checkpoints"]), f"{r['thread_bytes']:,}", f"{r['bytes_per_turn']:,}",
                  f"{r['view_bytes']:,}")
    return t


def plot(results: list[dict[str, Any]]) -> Path:
    """Bytes per thread over turns, one line per run."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4))
    for res in results:
        xs = [r["turn"] for r in res["rows"]]
        ys = [(r["thread_bytes"] + r["view_bytes"]) / 1e6 for r in res["rows"]]
        ax.plot(xs, ys, marker="o", label=f"{res['backend']}, keep {res['keep'] or 'all'}")
    ax.axhline(TARGET_BYTES / 1e6, color="grey", linestyle="--", label="2 MiB target")
    ax.set_xlabel("turn")
    ax.set_ylabel("checkpoint storage per thread (MB)")
    ax.legend()
    fig.tight_layout()
    path = out_dir() / "footprint.png"
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``memchat bench footprint``; exit status 1 when the thread is over 2 MiB at the end."""
    ap = argparse.ArgumentParser(prog="memchat bench footprint", description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--turns", type=int, default=1000)
    ap.add_argument("--keep", type=int, default=None, help="MEMCHAT_CHECKPOINT_KEEP (default: the setting's)")
    ap.add_argument("--checkpoint-url", default="", help="a postgresql:// URL (default: SQLite in a temp dir)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    a = ap.parse_args(argv)
    if a.turns < 1:
        ap.error("--turns must be at least 1")
    keep = a.keep
    if keep is None:
        from memchat.settings import Settings

        keep = int(os.environ.get("MEMCHAT_CHECKPOINT_KEEP") or Settings.model_fields["checkpoint_keep"].default)
    res = run(a.turns, keep, a.checkpoint_url)
    res["plot"] = str(plot([res]))
    emit([table(res)], res, a.json, notes=[f"plot: {res['plot']}"])
    return 0 if res["meets_target"] else 1
