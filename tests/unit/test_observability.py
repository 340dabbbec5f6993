"""Observability: /metrics in the Prometheus text format (behind auth), request ids in and out, JSON-line
logs that carry the request id (also from worker threads) and no message content at INFO."""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from memchat.backends.observability import (
    JSONFormatter,
    TextFormatter,
    configure_logging,
    request_id_var,
    uvicorn_log_config,
)
from memchat.server.metrics import samples
from tests.support.serving import StubURL, serve_memchat

KEY = "sk-observe"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRET = "SECRET-CONTENT-4242 my passport number is X99-1234"


@pytest.fixture(scope="module")
def base(stub: StubURL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # inline summaries: the log test below wants the summary's warning inside the request that compacts
    with serve_memchat(stub, tmp_path_factory.mktemp("obs"), api_key=KEY, l0_turns=1, llm_max_retries=0,
                       background_summaries=False) as url:
        yield url


def chat(base: str, text: str, tid: str | None = None, stream: bool = False, **headers: str) -> httpx.Response:
    h = {**AUTH, **({"X-Thread-ID": tid} if tid else {}), **headers}
    return httpx.post(f"{base}/v1/chat/completions", headers=h, timeout=60,
                      json={"model": "memchat", "stream": stream, "messages": [{"role": "user", "content": text}]})


def metrics(base: str) -> dict[str, float]:
    r = httpx.get(f"{base}/metrics", headers=AUTH)
    assert r.status_code == 200
    return samples(r.text)


def test_metrics_need_auth_and_use_the_prometheus_format(base: str) -> None:
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.get(f"{base}/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    expected = {
        "memchat_turns": "counter", "memchat_llm_calls": "counter", "memchat_llm_failures": "counter",
        "memchat_extraction_failures": "counter", "memchat_extraction_rejected": "counter",
        "memchat_summary_failures": "counter",
        "memchat_retrieval_failures": "counter", "memchat_cached_token_ratio": "gauge",
        "memchat_turn_latency_seconds": "histogram", "memchat_ttft_seconds": "histogram",
        "memchat_prompt_tokens": "counter", "memchat_cached_tokens": "counter",
        "memchat_http_requests": "counter", "memchat_http_request_duration_seconds": "histogram",
        "memchat_turns_in_progress": "gauge", "memchat_backend_up": "gauge",
    }
    for name, kind in expected.items():
        assert name in families and families[name].type == kind, name
    assert {s.labels["kind"] for s in families["memchat_llm_calls"].samples} == {"respond", "summary", "extraction",
                                                                                 "stateless"}
    assert "# HELP memchat_turn_latency_seconds" in r.text and 'le="+Inf"' in r.text


def test_turns_calls_latencies_and_cache_are_counted(base: str) -> None:
    m0 = metrics(base)
    assert chat(base, "Hello, tell me about tea.", "m1").status_code == 200
    assert chat(base, "And about coffee?", "m1", stream=True).status_code == 200
    assert chat(base, "No thread here.").status_code == 200
    assert httpx.post(f"{base}/v1/threads/m1/summarize", headers=AUTH, timeout=60).status_code == 200
    m1 = metrics(base)

    def d(key: str) -> float:
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    assert d('memchat_turns_total{mode="thread",outcome="ok"}') == 2
    assert d('memchat_turns_total{mode="stateless",outcome="ok"}') == 1
    assert d('memchat_llm_calls_total{kind="respond"}') == 2
    assert d('memchat_llm_calls_total{kind="stateless"}') == 1
    assert d('memchat_llm_calls_total{kind="summary"}') >= 1  # the on-demand L2 (and any L1 compaction)
    assert d('memchat_turn_latency_seconds_count{mode="thread"}') == 2
    assert d('memchat_ttft_seconds_count{mode="thread"}') == 2
    assert d('memchat_ttft_seconds_count{mode="stateless"}') == 1
    assert d('memchat_turn_latency_seconds_sum{mode="thread"}') > 0
    assert d("memchat_prompt_tokens_total") > 100
    assert d("memchat_cached_tokens_total") > 0  # the second turn reuses the first one's prefix
    assert 0 < m1["memchat_cached_token_ratio"] < 1
    assert d('memchat_http_requests_total{method="POST",status="200"}') == 4
    assert m1['memchat_turns_in_progress{mode="thread"}'] == 0 and m1["memchat_backend_up"] == 1


def test_request_ids_are_echoed_or_made(base: str) -> None:
    r = httpx.get(f"{base}/health", headers={"X-Request-ID": "abc-123.x:y_z"})
    assert r.headers["x-request-id"] == "abc-123.x:y_z"
    made = httpx.get(f"{base}/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    for bad in ("x" * 200, "has space", "semi;colon", "ünï"):
        got = httpx.get(f"{base}/health", headers={"X-Request-ID": bad.encode()}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", got), bad  # not echoed: a fresh id instead
    assert httpx.get(f"{base}/v1/threads", headers={"X-Request-ID": "unauth-1"}).headers["x-request-id"] == "unauth-1"
    r = httpx.get(f"{base}/v1/threads/nope/memory", headers={**AUTH, "X-Request-ID": "nf-1"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "nf-1"
    assert r.headers["x-content-type-options"] == "nosniff"


def _formatted(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    fmt = JSONFormatter()
    return [json.loads(fmt.format(r)) for r in records]


def test_logs_carry_the_request_id_and_no_content(base: str, stub: StubURL, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert chat(base, f"{SECRET} (turn one)", "logs", **{"X-Request-ID": "obs-1"}).status_code == 200
    assert chat(base, "A second turn about the weather.", "logs", **{"X-Request-ID": "obs-2"}).status_code == 200
    httpx.post(f"{stub.root}/_control", json={"replies": ["{not json"]})  # the L1 summary of the next turn fails
    assert chat(base, "A third turn.", "logs", **{"X-Request-ID": "obs-3"}).status_code == 200
    lines = _formatted(caplog.records)
    for line in lines:
        assert SECRET not in json.dumps(line, ensure_ascii=False)  # no message content at INFO
        assert "X99-1234" not in json.dumps(line)
    access = [x for x in lines if x["logger"] == "memchat.access" and x.get("request_id") == "obs-1"]
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["method"] == "POST" and access[0]["thread_id"] == "logs"
    assert access[0]["path"] == "/v1/chat/completions" and access[0]["duration_ms"] > 0
    turn = next(x for x in lines if x["logger"] == "memchat.turn" and x.get("request_id") == "obs-1")
    assert turn["msg"] == "turn answered" and turn["turn"] == 1 and turn["message_chars"] == len(SECRET) + 11
    assert turn["latency_ms"] > 0 and turn["prompt_tokens"] > 0
    # a warning written by a node in a worker thread carries the id of the request it served
    warn = next(x for x in lines if x["logger"] == "memchat.summarize")
    assert warn["level"] == "WARNING" and warn["request_id"] == "obs-3" and "L1 summary failed" in warn["msg"]

    # DEBUG on memchat.turn adds the content (opt-in)
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="memchat.turn")
    assert chat(base, f"{SECRET} (debug)", "logs-debug", **{"X-Request-ID": "obs-dbg"}).status_code == 200
    debug = [x for x in _formatted(caplog.records) if x["level"] == "DEBUG" and x["logger"] == "memchat.turn"]
    assert debug and debug[0]["user_message"].startswith(SECRET) and debug[0]["request_id"] == "obs-dbg"


def test_formatters_and_logging_setup(capsys: pytest.CaptureFixture[str]) -> None:
    token = request_id_var.set("rid-7")
    try:
        record = logging.getLogger("memchat.x").makeRecord("memchat.x", logging.ERROR, __file__, 1, "boom %s",
                                                           ("now",), None, extra={"obj": object(), "n": 3})
    finally:
        request_id_var.reset(token)
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    out = json.loads(JSONFormatter().format(record))
    assert out["msg"] == "boom now" and out["level"] == "ERROR" and out["request_id"] == "rid-7" and out["n"] == 3
    assert out["obj"].startswith("<object") and "ValueError: bad" in out["exc"]
    assert "[rid-7]" in TextFormatter().format(record)

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("memchat").level, logging.getLogger("httpx").level)
    try:
        configure_logging("json", "INFO")
        logging.getLogger("memchat.setup").info("hello %s", "world", extra={"k": 1})
        logging.getLogger("httpx").info("not shown: libraries log warnings only")
        warnings.warn("a library warning", UserWarning, stacklevel=1)
        err = capsys.readouterr().err.splitlines()
        lines = [json.loads(x) for x in err]  # every line is JSON
        assert lines[0]["msg"] == "hello world" and lines[0]["k"] == 1 and len(lines) == 2
        assert lines[1]["logger"] == "py.warnings" and "a library warning" in lines[1]["msg"]
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("memchat").setLevel(saved[2])
        logging.getLogger("httpx").setLevel(saved[3])
    cfg = uvicorn_log_config("json", "INFO")
    assert cfg["formatters"]["memchat"]["()"] == "memchat.backends.observability.JSONFormatter"
    assert cfg["loggers"]["uvicorn.access"]["handlers"] == []  # memchat.access writes the access log
    assert uvicorn_log_config("text")["formatters"]["memchat"]["()"].endswith("TextFormatter")
