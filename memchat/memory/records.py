"""What vector memory stores and returns (no I/O): a memory record, a hit, deterministic ids, and the fusion
of dense and BM25 scores that every store shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Fusion: each retriever's scores are normalized to [0, 1] over its own candidates (dense: min-max of
# the cosine, BM25: share of the best score) and added with these weights. BM25 gets the larger weight:
# names, places and rare words decide most memory questions, and the small default embedder is weak.
DENSE_WEIGHT = 1.0
BM25_WEIGHT = 1.5
DATE_WEIGHT = 1.0  # a memory of the days a question names, ranked within them, against the overall ranking


@dataclass
class MemoryDoc:
    """One stored memory: a raw message or an extracted fact."""

    id: str
    text: str
    user_id: str
    thread_id: str
    kind: str  # "turn" | "fact"
    speaker: str = "user"
    turn: int = 0
    seq: int = 0  # position in the thread's message stream (neighbour expansion)
    date: str = ""
    scope: str = "thread"  # "thread" | "user"
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """Flat metadata for Chroma."""
        meta: dict[str, Any] = dict(
            user_id=self.user_id, thread_id=self.thread_id, kind=self.kind, speaker=self.speaker,
            turn=self.turn, seq=self.seq, date=self.date, scope=self.scope,
        )
        meta.update({k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool))})
        return meta

    @classmethod
    def from_chroma(cls, id_: str, text: str, meta: dict[str, Any]) -> MemoryDoc:
        """Rebuild from a Chroma row."""
        base = {"user_id", "thread_id", "kind", "speaker", "turn", "seq", "date", "scope"}
        return cls(
            id=id_, text=text, user_id=str(meta.get("user_id", "")), thread_id=str(meta.get("thread_id", "")),
            kind=str(meta.get("kind", "turn")), speaker=str(meta.get("speaker", "")), turn=int(meta.get("turn", 0)),
            seq=int(meta.get("seq", 0)), date=str(meta.get("date", "")), scope=str(meta.get("scope", "thread")),
            extra={k: v for k, v in meta.items() if k not in base},
        )


@dataclass
class Hit:
    """A retrieved memory with its fused score."""

    doc: MemoryDoc
    score: float
    dense: float | None = None
    bm25: float | None = None
    neighbour_of: str | None = None


def merge_dated(hits: list[Hit], dense: list[tuple[MemoryDoc, float]], sparse: list[tuple[MemoryDoc, float]],
                weight: float = DATE_WEIGHT) -> list[Hit]:
    """The question names a date: the memories of that window, ranked among themselves (its ``dense`` and
    ``sparse`` top-k, fused with no cosine floor: they count for the date, not their words), compete with the
    overall ranking, the window's best at ``weight`` times the overall best (the words of "what did we talk
    about on 3 June?" match other days' lines better); each memory keeps its better score. Shared by every store."""
    dated = fuse(dense, sparse, 0.0)
    if not dated:
        return hits
    scale = weight * (hits[0].score if hits else dated[0].score) / max(dated[0].score, 1e-9)
    by = {h.doc.id: h for h in hits}
    for d in dated:
        score = scale * d.score
        h = by.get(d.doc.id)
        if h is None:
            by[d.doc.id] = Hit(doc=d.doc, score=score, dense=d.dense, bm25=d.bm25)
        elif score > h.score:
            h.score = score
    return sorted(by.values(), key=lambda h: (-h.score, h.doc.id))


def msg_id(thread_id: str, seq: int) -> str:
    """Deterministic id of a raw message (a retried turn upserts, never duplicates)."""
    return f"msg:{thread_id}:{seq}"


def fuse(dense: list[tuple[MemoryDoc, float]], sparse: list[tuple[MemoryDoc, float]], min_score: float) -> list[Hit]:
    """Dense + BM25, each normalized over its candidates and added with weights; dense-only hits
    need a cosine of at least ``min_score``. Shared by every store, so both rank alike."""
    hits: dict[str, Hit] = {}
    if dense:
        hi, lo = dense[0][1], dense[-1][1]
        span = hi - lo
        for doc, s in dense:
            h = hits.setdefault(doc.id, Hit(doc=doc, score=0.0))
            h.dense = s
            h.score += DENSE_WEIGHT * ((s - lo) / span if span > 1e-9 else 1.0)
    if sparse:
        top = sparse[0][1]
        for doc, s in sparse:
            h = hits.setdefault(doc.id, Hit(doc=doc, score=0.0))
            h.bm25 = s
            h.score += BM25_WEIGHT * s / top
    kept = [h for h in hits.values() if h.bm25 is not None or (h.dense or 0.0) >= min_score]
    return sorted(kept, key=lambda h: (-h.score, h.doc.id))
