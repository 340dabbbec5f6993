"""Micro-batching of embeddings: concurrent callers share encode calls and each gets its own vectors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from memchat.backends.embed_batch import MicroBatcher


def test_concurrent_callers_share_batches_and_get_their_own_vectors() -> None:
    sizes: list[int] = []

    def encode(texts: list[str]) -> list[str]:
        sizes.append(len(texts))
        time.sleep(0.02)  # while one batch runs, the others queue
        return [t.upper() for t in texts]

    batcher = MicroBatcher(encode)
    calls = [[f"q{i}"] if i % 2 else [f"a{i}", f"b{i}"] for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(batcher, calls))
    assert got == [[t.upper() for t in c] for c in calls]
    assert sum(sizes) == sum(len(c) for c in calls)
    assert len(sizes) < len(calls) and max(sizes) > 2  # merged
    assert batcher.requests == len(calls) and batcher.batches == len(sizes)


def test_a_failing_encode_fails_its_callers_only() -> None:
    gate = threading.Event()

    def encode(texts: list[str]) -> list[str]:
        if "bad" in texts:
            gate.wait(1)
            raise RuntimeError("encode failed")
        return list(texts)

    batcher = MicroBatcher(encode)
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(batcher, ["bad"])
        time.sleep(0.05)
        gate.set()
        with pytest.raises(RuntimeError, match="encode failed"):
            bad.result()
    assert batcher(["fine"]) == ["fine"]  # the batcher is free again
    assert batcher([]) == []
