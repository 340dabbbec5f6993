"""Store outages under load: ``memchat serve`` over PostgreSQL and a Chroma server, each taken away for a few
seconds while conversations run (bench/outage.py, ``memchat bench outage``): only 503s with clear codes, no
request past the turn deadline, no acknowledged turn lost, no memory duplicated or missing, no half thread."""

from __future__ import annotations

import pytest

from memchat.bench.outage import ok, outage_stack
from tests.support.services import ChromaServer

pytest_plugins = ["tests.support.services"]  # pg_url, chroma_server
TURN_TIMEOUT = 20.0


@pytest.mark.slow
def test_store_outages_under_load_lose_nothing(pg_url: str, chroma_server: ChromaServer) -> None:
    res = outage_stack(threads=4, turns=4, down=8.0, gap=2.0, turn_timeout=TURN_TIMEOUT, pg_url=pg_url,
                       chroma_url=chroma_server.url)
    codes = {k for k in res["status"] if k != "200"}
    assert codes <= {"503 checkpoint_unavailable", "503 vector_store_unavailable", "409 thread_busy"}, res
    assert "503 checkpoint_unavailable" in codes, res  # the PostgreSQL outage was felt, and answered plainly
    assert [o["recovery_s"] is not None for o in res["outages"]] == [True, True], res  # both came back
    assert ok(res, TURN_TIMEOUT), res
    assert res["turns_acknowledged"] >= 4 * 4
