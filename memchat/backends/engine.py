"""The memory engine: the services the nodes share (tokenizer, vector memory, LLM, counters)."""

from __future__ import annotations

import bisect
import hashlib
import json
import threading
import weakref
from collections import Counter
from datetime import datetime
from functools import lru_cache
from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import SecretStr

from memchat.backends.tokens import TokenCounter, load_tokenizer
from memchat.backends.vectorstore import Hit, MemoryDoc, VectorMemory, msg_id
from memchat.memory.date_cues import date_window
from memchat.memory.prompt import Budget, memory_line
from memchat.memory.recall_policy import asks, content_free
from memchat.settings import Settings


class Metrics:
    """Process-wide counters (LLM calls by kind, failures, cached tokens) for /metrics and benches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def inc(self, name: str, n: float = 1) -> None:
        with self._lock:
            self.counts[name] += n  # type: ignore[assignment]

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.counts)


METRICS = Metrics()


class CountCache:
    """A tokenizer whose counts are remembered: memory lines and sticky blocks are counted every turn."""

    def __init__(self, tok: TokenCounter, size: int = 16384) -> None:
        self.tok = tok
        self._count = lru_cache(maxsize=size)(tok.count)

    def count(self, text: str) -> int:
        if len(text) > 4000:  # long messages are counted once or twice; keep the cache small
            return self.tok.count(text)
        return int(self._count(text))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def truncate(self, text: str, max_tokens: int) -> str:
        return self.tok.truncate(text, max_tokens)


class Engine:
    """Lazily built services for one settings object; backends are chosen by settings alone."""

    def __init__(self, settings: Settings, *, llm: BaseChatModel | None = None, memory: VectorMemory | None = None,
                 tokenizer: TokenCounter | None = None) -> None:
        self.settings = settings
        self._llm = llm
        self._memory = memory
        self._tokenizer = tokenizer
        self._budget: Budget | None = None
        self._lock = threading.RLock()
        self._costs: dict[tuple[Any, ...], int] = {}
        self.metrics = METRICS

    @property
    def tokenizer(self) -> TokenCounter:
        if self._tokenizer is None:
            self._tokenizer = CountCache(load_tokenizer(self.settings.tokenizer))
        return self._tokenizer

    @property
    def budget(self) -> Budget:
        if self._budget is None:
            self._budget = Budget(self.tokenizer)
        return self._budget

    @property
    def memory(self) -> VectorMemory:
        with self._lock:
            if self._memory is None:
                from memchat.backends.embeddings import embeddings_for
                from memchat.backends.stores import make_memory

                emb = embeddings_for(self.settings)
                self._memory = make_memory(self.settings, emb)
            return self._memory

    def warm_up(self) -> None:
        """Load the tokenizer, the embedder (and its ONNX session) and the vector store now: a server worker's
        first turns otherwise wait seconds for them (the 10–15 s latency tail of ``bench load --workers 2``)."""
        from memchat.backends.embeddings import embeddings_for

        self.tokenizer.count("warm up")
        self.memory.count()
        embeddings_for(self.settings).embed_query("warm up")

    @property
    def llm(self) -> BaseChatModel:
        with self._lock:
            if self._llm is None:
                from memchat.backends.llm import make_chat_model

                self._llm = make_chat_model(self.settings)
            return self._llm

    # ---- retrieval --------------------------------------------------------------------------
    def recall(self, query: str, *, user_id: str, thread_id: str | None, budget_tokens: int,
               exclude_ids: set[str] | None = None, top_k: int | None = None,
               now: datetime | None = None) -> list[dict[str, Any]]:
        """Hybrid retrieval + neighbour expansion, deduplicated, cut to ``budget_tokens``.

        The ``top_k`` best hits (dense + BM25, see :meth:`ChromaMemory.search`) pass their score on
        to the turns around them (``memory_neighbours`` each side, decaying with distance): an answer
        is often the message right after the one that matches the question. A fact stated in this
        thread stands for the message it came from (each memory is shown once), an assistant line
        comes only with the user line it answers, and content-free lines are never shown. Candidates then fill the budget best first, measured as they will be rendered:
        in conversation order, the date shown once per day (``- [8 May 2023] Melanie: ...``).
        """
        s = self.settings
        if budget_tokens <= 0 or not query.strip():
            return []
        exclude = exclude_ids or set()
        when = date_window(query, now)
        found = self.memory.search(query, user_id, thread_id, s.memory_candidates, min_score=s.memory_min_score,
                                   when=when)
        hits = self._as_messages(found, thread_id)
        hits = demote_questions([h for h in hits if h.doc.id not in exclude])
        if hits:  # a hit far weaker than the best unseen one is noise for this query
            floor = MIN_RELATIVE_SCORE * hits[0].score
            hits = [h for h in hits if h.score >= floor]
        hits = hits[: (top_k if top_k is not None else s.memory_top_k)]
        ranked = self._expand(hits, exclude) if s.memory_neighbours else hits
        return self._fill(ranked, budget_tokens, exclude)

    def _as_messages(self, hits: list[Hit], thread_id: str | None) -> list[Hit]:
        """A fact stated in a thread in scope (this one; every thread of the user when ``thread_id`` is None) is
        replaced by its source message (best score kept), once."""
        src = {h.doc.id: msg_id(h.doc.thread_id, 2 * h.doc.turn - 1) for h in hits
               if h.doc.kind == "fact" and h.doc.thread_id and h.doc.turn > 0
               and (thread_id is None or h.doc.thread_id == thread_id)}
        if not src:
            return hits
        have = {h.doc.id: h for h in hits}
        missing = sorted(set(src.values()) - set(have))
        docs = {d.id: d for d in self.memory.get_ids(missing)} if missing else {}
        best: dict[str, Hit] = {}
        for h in hits:
            mid = src.get(h.doc.id)
            if mid is not None and (mid in have or mid in docs):
                base = have[mid].doc if mid in have else docs[mid]
                if h.doc.text.strip().lower() not in base.text.lower():
                    mid = None  # not a sentence of that message: keep the fact itself
                else:
                    h = Hit(doc=base, score=h.score, dense=h.dense, bm25=h.bm25)
            key = h.doc.id
            if key not in best or h.score > best[key].score:
                best[key] = h
        return sorted(best.values(), key=lambda h: (-h.score, h.doc.id))

    def _expand(self, hits: list[Hit], exclude: set[str]) -> list[Hit]:
        """Hits and their neighbours, each with its best (decayed) score, best first.

        In a chat thread (user lines at odd ``seq``, the replies after them) the neighbours of a line
        are the user lines of the turns around it, and its answer; an assistant line brings the user
        line it answers at its own score. Elsewhere (imported transcripts) neighbours are by ``seq``.
        """
        want: dict[str, list[tuple[Hit, float]]] = {}
        for h in hits:
            for seq, weight in self._neighbours(h):
                want.setdefault(msg_id(h.doc.thread_id, seq), []).append((h, weight))
        best: dict[str, Hit] = {h.doc.id: h for h in hits}
        for n in self.memory.get_ids(sorted(set(want) - exclude)):
            for h, weight in want.get(n.id, []):
                if n.user_id != h.doc.user_id or n.thread_id != h.doc.thread_id:
                    continue
                cur = best.get(n.id)
                if cur is None or h.score * weight > cur.score:
                    best[n.id] = Hit(doc=n, score=h.score * weight, neighbour_of=h.doc.id)
        return sorted(best.values(), key=lambda h: (-h.score, h.doc.thread_id, h.doc.seq, h.doc.id))

    def _neighbours(self, h: Hit) -> list[tuple[int, float]]:
        """(seq, weight relative to the hit) of the lines around a hit."""
        w, d = self.settings.memory_neighbours, h.doc
        if d.kind != "turn" or not d.seq or not w:
            return []
        if d.speaker in ("user", "assistant") and d.turn and d.seq in (2 * d.turn - 1, 2 * d.turn):
            out = [(2 * (d.turn + k) - 1, NEIGHBOUR_WEIGHT * NEIGHBOUR_DECAY ** (abs(k) - 1))
                   for k in range(-w, w + 1) if k and d.turn + k > 0]
            out.append((2 * d.turn, ANSWER_WEIGHT) if d.speaker == "user" else (2 * d.turn - 1, 1.0))
            return out
        return [(d.seq + k, NEIGHBOUR_WEIGHT * NEIGHBOUR_DECAY ** (abs(k) - 1))
                for k in range(-w, w + 1) if k and d.seq + k > 0]

    def _fill(self, ranked: list[Hit], budget_tokens: int, exclude: set[str] | None = None) -> list[dict[str, Any]]:
        """Greedy best-first fill of the budget, exact under the once-per-day date rendering.

        Content-free lines and repeated texts are skipped; an assistant line needs the user line it
        answers in this block or shown already.
        """
        chosen: list[dict[str, Any]] = []  # kept in render order
        keys: list[tuple[Any, ...]] = []
        texts: set[str] = set()
        shown = exclude or set()
        used = 0
        for h in ranked:
            item = _item(h)
            text = " ".join(str(item["text"]).lower().split())
            if text in texts or content_free(text):
                continue
            if item["kind"] == "turn" and item["speaker"] == "assistant" and item["seq"] > 1:
                asked = msg_id(item["thread_id"], item["seq"] - 1)
                if asked not in shown and all(c["id"] != asked for c in chosen):
                    continue
            delta = self._insert_cost(chosen, keys, item)
            if delta is None or used + delta > budget_tokens:
                continue
            self._insert(chosen, keys, item)
            texts.add(text)
            used += delta
        return chosen

    def _insert_cost(self, chosen: list[dict[str, Any]], keys: list[tuple[Any, ...]],
                     item: dict[str, Any]) -> int | None:
        key = _order_key(item)
        i = bisect.bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return None
        prev = chosen[i - 1] if i > 0 else None
        nxt = chosen[i] if i < len(chosen) else None
        shows = prev is None or _day_group(prev) != _day_group(item)
        delta = self._line_cost(item, shows)
        if nxt is not None and _day_group(nxt) == _day_group(item) and nxt["date"]:
            delta += self._line_cost(nxt, False) - self._line_cost(nxt, True)  # nxt loses its date
        return delta

    @staticmethod
    def _insert(chosen: list[dict[str, Any]], keys: list[tuple[Any, ...]], item: dict[str, Any]) -> None:
        key = _order_key(item)
        i = bisect.bisect_left(keys, key)
        prev = chosen[i - 1] if i > 0 else None
        nxt = chosen[i] if i < len(chosen) else None
        item["date"] = item["date"] if prev is None or _day_group(prev) != _day_group(item) else ""
        if nxt is not None and _day_group(nxt) == _day_group(item):
            nxt["date"] = ""
        chosen.insert(i, item)
        keys.insert(i, key)

    def _line_cost(self, item: dict[str, Any], with_date: bool) -> int:
        key = (item["id"], item["text"], item["speaker"], item["kind"], item["shown_date"] if with_date else "")
        cost = self._costs.get(key)
        if cost is None:
            line = memory_line(dict(item, date=item["shown_date"] if with_date else ""))
            cost = self._costs[key] = self.tokenizer.count(line) + 1
            if len(self._costs) > 50_000:
                self._costs.clear()
        return cost

    def store_docs(self, docs: list[MemoryDoc]) -> None:
        """Upsert into vector memory (idempotent ids)."""
        self.memory.add(docs)


MIN_RELATIVE_SCORE = 0.3  # hits below this share of the best hit's score are dropped
ANSWER_WEIGHT = 0.85  # the reply to a user line that is a hit
NEIGHBOUR_WEIGHT = 0.85  # a neighbour's score, relative to the hit it sits next to
NEIGHBOUR_DECAY = 0.7  # and per further step away
ASK_WEIGHT = 0.25  # a hit that only asks (an earlier question), relative to a statement


def demote_questions(hits: list[Hit], weight: float | None = None) -> list[Hit]:
    """A message that only asks holds no answer (its reply and the turns around it may): its score is
    multiplied by ``weight`` (earlier questions on the thread otherwise outrank the evidence for a new
    question like them). Best first again."""
    w = ASK_WEIGHT if weight is None else weight
    out = [Hit(doc=h.doc, score=h.score * w, dense=h.dense, bm25=h.bm25, neighbour_of=h.neighbour_of)
           if h.doc.kind == "turn" and _asks(h.doc.text) else h for h in hits]
    return sorted(out, key=lambda h: (-h.score, h.doc.id))


_asks = lru_cache(maxsize=16384)(asks)  # the same stored lines are hits turn after turn


def short_date(stored: str) -> str:
    """``2023-05-08 13:56`` as ``8 May 2023`` (9 Qwen tokens instead of 16); other text unchanged."""
    raw = stored.strip()
    try:
        d = datetime.strptime(raw[:10], "%Y-%m-%d")
    except ValueError:
        return raw
    return f"{d.day} {d.strftime('%b %Y')}"


def _order_key(item: dict[str, Any]) -> tuple[Any, ...]:
    return (item["kind"] != "fact", item["thread_id"], item["seq"], item["id"])


def _day_group(item: dict[str, Any]) -> tuple[Any, ...]:
    return (item["kind"] != "fact", item["thread_id"], item["shown_date"])


def _item(h: Hit) -> dict[str, Any]:
    d = h.doc
    shown = short_date(d.date) if d.date else ""
    return dict(id=d.id, text=d.text, speaker=d.speaker if d.kind == "turn" else "fact", kind=d.kind, turn=d.turn,
                seq=d.seq, thread_id=d.thread_id, date=shown, shown_date=shown, stored_date=d.date,
                score=round(h.score, 5), neighbour_of=h.neighbour_of)


_engines: weakref.WeakValueDictionary[str, Engine] = weakref.WeakValueDictionary()
_engines_lock = threading.Lock()


def settings_key(settings: Settings) -> str:
    """A digest of every setting, secrets included (``model_dump_json`` masks them: two API keys would look alike)."""
    raw = settings.model_dump(mode="python")
    flat = json.dumps({k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in raw.items()},
                      sort_keys=True, default=str)
    return hashlib.sha256(flat.encode()).hexdigest()


def shared_engine(settings: Settings) -> Engine:
    """The engine of these exact settings while anything holds it (MemChat instances and graphs built on the same
    settings share its in-process indexes and background summaries); forgotten when no one does."""
    key = settings_key(settings)
    with _engines_lock:
        eng = _engines.get(key)
        if eng is None:
            eng = Engine(settings)
            _engines[key] = eng
        return eng
