"""Prometheus metrics of the memchat server (``GET /metrics``, text exposition format).

Each app has its own :class:`prometheus_client.CollectorRegistry` (several apps can live in one
process, as in the tests). Two sources:

* what the server measures per request and per turn (turns by mode and outcome, turn latency, time to
  the first token, prompt and cached tokens, HTTP requests), and
* the engine's process-wide counters (:data:`memchat.backends.engine.METRICS`: LLM calls by kind, LLM failures,
  extraction / summary / retrieval failures), read at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from memchat.backends.engine import METRICS, Metrics

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# engine counter name -> (metric family, documentation, labels)
LLM_KINDS = ("respond", "summary", "extraction", "stateless")
FAILURE_COUNTERS = {
    "extraction_failures": "LLM fact extractions that failed (invalid JSON, timeout, backend error); the turn "
                           "was answered",
    "extraction_rejected": "Operations of the LLM extraction tier dropped as ungrounded (not in the user's own "
                           "words, a question, a hypothetical, a quote or another person)",
    "extraction_skipped": "LLM slot extractions not called: every sentence of the message asks (or is hypothetical, "
                          "reported or quoted), so the checks would drop any operation",
    "summary_failures": "L1/L2 summaries that failed (invalid JSON, timeout, backend error); the turn was answered "
                        "with an extractive fallback",
    "retrieval_failures": "Retrievals that failed; the turn was answered without recalled memories",
    "memory_write_failures": "Vector-memory writes that failed after the turn was saved; written again before "
                             "the thread's next turn",
}
MODES = ("thread", "stateless", "graph")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class EngineCollector(Collector):
    """The engine's counters, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.snapshot()
        calls = CounterMetricFamily("memchat_llm_calls", "LLM calls by kind (respond: the reply of a turn; "
                                    "summary: L1/L2 summaries and batched fact extraction; extraction: the slot extraction after "
                                    "a reply; stateless: a reply "
                                    "without a thread)", labels=["kind"])
        for kind in LLM_KINDS:
            calls.add_metric([kind], float(snap.get(f"llm_calls_{kind}", 0)))
        yield calls
        yield CounterMetricFamily("memchat_llm_failures", "Reply calls that failed (the turn was not saved)",
                                  value=float(snap.get("llm_failures", 0)))
        for name, doc in FAILURE_COUNTERS.items():
            yield CounterMetricFamily(f"memchat_{name}", doc, value=float(snap.get(name, 0)))


class RatioCollector(Collector):
    """``memchat_cached_token_ratio``: cached prompt tokens / prompt tokens since start."""

    def __init__(self, prompt: Counter, cached: Counter) -> None:
        self.prompt = prompt
        self.cached = cached

    def collect(self) -> Iterator[Metric]:
        p = _value(self.prompt)
        c = _value(self.cached)
        yield GaugeMetricFamily("memchat_cached_token_ratio",
                                "Share of prompt tokens the LLM backend reported as cached (prefix cache), "
                                "since start", value=(c / p) if p else 0.0)


def _value(counter: Counter) -> float:
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                return float(sample.value)
    return 0.0


class ServerMetrics:
    """The server's metrics; :meth:`render` gives the ``/metrics`` body."""

    def __init__(self, engine_metrics: Metrics = METRICS, backend_up: Callable[[], bool] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.turns = Counter("memchat_turns", "Chat turns answered, by mode (thread, stateless, graph) and "
                             "outcome (ok, or the error code)", ["mode", "outcome"], registry=r)
        self.in_progress = Gauge("memchat_turns_in_progress", "Turns running now", ["mode"], registry=r)
        self.turn_latency = Histogram("memchat_turn_latency_seconds", "Whole turn, request to final result "
                                      "(successful turns)", ["mode"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("memchat_ttft_seconds", "Time to the first reply token, from the start of the "
                              "turn", ["mode"], buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("memchat_prompt_tokens", "Prompt tokens of answered turns", registry=r)
        self.cached_tokens = Counter("memchat_cached_tokens", "Prompt tokens the backend reported as cached",
                                     registry=r)
        self.completion_tokens = Counter("memchat_completion_tokens", "Reply tokens of answered turns", registry=r)
        self.http = Counter("memchat_http_requests", "HTTP requests by method and status", ["method", "status"],
                            registry=r)
        self.http_latency = Histogram("memchat_http_request_duration_seconds", "HTTP request duration (to the "
                                      "end of the response body)", buckets=HTTP_BUCKETS, registry=r)
        self.backend_up = Gauge("memchat_backend_up", "1 when the last probe found the LLM backend up", registry=r)
        if backend_up is not None:
            self.backend_up.set_function(lambda: 1.0 if backend_up() else 0.0)
        r.register(EngineCollector(engine_metrics))
        r.register(RatioCollector(self.prompt_tokens, self.cached_tokens))
        for mode in MODES:  # the series exist (at 0) before the first turn
            self.turns.labels(mode, "ok")
            self.turn_latency.labels(mode)
            self.ttft.labels(mode)
            self.in_progress.labels(mode)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

    def turn(self, mode: str) -> TurnObserver:
        """Start observing one turn."""
        return TurnObserver(self, mode)


class TurnObserver:
    """Times one turn: first token, final result or failure (recorded once)."""

    def __init__(self, metrics: ServerMetrics, mode: str) -> None:
        self.m = metrics
        self.mode = mode
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.done = False
        metrics.in_progress.labels(mode).inc()

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.t0
            self.m.ttft.labels(self.mode).observe(self.first)

    def result(self, usage: dict[str, Any] | None, cached: int | None) -> float:
        """A finished turn; returns its latency in seconds."""
        latency = time.perf_counter() - self.t0
        if self.done:
            return latency
        self.done = True
        self.m.in_progress.labels(self.mode).dec()
        self.m.turns.labels(self.mode, "ok").inc()
        self.m.turn_latency.labels(self.mode).observe(latency)
        u = usage or {}
        prompt = u.get("prompt_tokens", u.get("input_tokens"))
        completion = u.get("completion_tokens", u.get("output_tokens"))
        if prompt:
            self.m.prompt_tokens.inc(float(prompt))
            self.m.cached_tokens.inc(float(min(int(cached or 0), int(prompt))))
        if completion:
            self.m.completion_tokens.inc(float(completion))
        return latency

    def failed(self, outcome: str) -> None:
        """A turn that ended without a result (``outcome``: the error code, or ``cancelled``)."""
        if self.done:
            return
        self.done = True
        self.m.in_progress.labels(self.mode).dec()
        self.m.turns.labels(self.mode, outcome).inc()


def samples(text: str) -> dict[str, float]:
    """Parse exposition text into ``{'name{label="v",...}': value}`` (labels sorted; ``name`` alone when
    there are none), for tests and ``memchat bench load``."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out
