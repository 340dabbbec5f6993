"""The memory engine: the services the nodes share (tokenizer, vector memory, LLM, counters)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from langchain_core.language_models import BaseChatModel

from graph.prompt import Budget, memory_line
from graph.settings import Settings, get_settings
from graph.tokens import TokenCounter, load_tokenizer
from graph.vectorstore import ChromaMemory, Hit, MemoryDoc, VectorMemory, make_chroma_client, msg_id


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
        self.metrics = METRICS

    @property
    def tokenizer(self) -> TokenCounter:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.settings.tokenizer)
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
                from graph.embeddings import load_embeddings

                emb = load_embeddings(self.settings.embedding_model, self.settings.embedding_query_prefix,
                                      self.settings.embedding_device)
                client = make_chroma_client(self.settings.chroma_url, self.settings.data_dir)
                self._memory = ChromaMemory(client, emb, self.settings.chroma_collection)
            return self._memory

    @property
    def llm(self) -> BaseChatModel:
        with self._lock:
            if self._llm is None:
                from graph.llm import make_chat_model

                self._llm = make_chat_model(self.settings)
            return self._llm

    # ---- retrieval --------------------------------------------------------------------------
    def recall(self, query: str, *, user_id: str, thread_id: str | None, budget_tokens: int,
               exclude_ids: set[str] | None = None, top_k: int | None = None) -> list[dict[str, Any]]:
        """Hybrid retrieval + neighbour expansion, deduplicated, cut to ``budget_tokens``."""
        s = self.settings
        if budget_tokens <= 0 or not query.strip():
            return []
        exclude = exclude_ids or set()
        hits = [h for h in self.memory.search(query, user_id, thread_id, s.memory_candidates,
                                              min_score=s.memory_min_score) if h.doc.id not in exclude]
        hits = hits[: (top_k if top_k is not None else s.memory_top_k)]
        groups = self._expand(hits, exclude) if s.memory_neighbours else [[h] for h in hits]
        chosen: dict[str, dict[str, Any]] = {}
        used = 0
        for group in groups:
            for h in group:
                if h.doc.id in chosen:
                    continue
                item = _item(h)
                cost = self.tokenizer.count(memory_line(item)) + 1
                if used + cost > budget_tokens:
                    continue
                chosen[h.doc.id] = item
                used += cost
        items = list(chosen.values())
        items.sort(key=lambda it: (it["kind"] != "fact", it["thread_id"], it["seq"], it["id"]))
        return items

    def _expand(self, hits: list[Hit], exclude: set[str]) -> list[list[Hit]]:
        w = self.settings.memory_neighbours
        want: list[str] = []
        for h in hits:
            if h.doc.kind == "turn" and h.doc.seq:
                want.extend(msg_id(h.doc.thread_id, h.doc.seq + d) for d in range(-w, w + 1) if d)
        found = {d.id: d for d in self.memory.get_ids(sorted(set(want) - exclude))}
        groups = []
        for h in hits:
            group = [h]
            if h.doc.kind == "turn" and h.doc.seq:
                for d in range(-w, w + 1):
                    n = found.get(msg_id(h.doc.thread_id, h.doc.seq + d)) if d else None
                    if n is not None and n.user_id == h.doc.user_id:
                        group.append(Hit(doc=n, score=h.score, neighbour_of=h.doc.id))
            groups.append(group)
        return groups

    def store_docs(self, docs: list[MemoryDoc]) -> None:
        """Upsert into vector memory (idempotent ids)."""
        self.memory.add(docs)


def _item(h: Hit) -> dict[str, Any]:
    d = h.doc
    return dict(id=d.id, text=d.text, speaker=d.speaker if d.kind == "turn" else "fact", kind=d.kind, turn=d.turn,
                seq=d.seq, thread_id=d.thread_id, date=d.date, score=round(h.score, 5),
                neighbour_of=h.neighbour_of)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(settings: Settings | None = None) -> Engine:
    """One engine per distinct settings in this process."""
    settings = settings or get_settings()
    key = settings.model_dump_json()
    with _engines_lock:
        eng = _engines.get(key)
        if eng is None:
            eng = _engines[key] = Engine(settings)
        return eng
