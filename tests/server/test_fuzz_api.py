"""Fuzzing: schemathesis generates requests from the server's own OpenAPI spec (every operation: the
OpenAI routes, threads, LangServe, login, metrics) and sends them with the API key to the ASGI app; no
answer may be a 5xx. The LLM is the scripted fake (fast, in process); examples are bounded and derandomized
so the run is reproducible and takes well under two minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from memchat.backends.engine import Engine
from memchat.chat import MemChat
from memchat.server.app import create_app
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel

KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
POSITIVE = 15  # examples per operation that follow the schema
NEGATIVE = 10  # and that break it


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data: Path = tmp_path_factory.mktemp("fuzz")
    s = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="fake", data_dir=data, api_key=KEY,
                 max_request_chars=20_000, _env_file=None)  # type: ignore[call-arg]
    app = create_app(s, MemChat(engine=Engine(s, llm=ScriptedChatModel())), probe=False)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


def fuzz(operation: Any, mode: GenerationMode, examples: int) -> None:
    """Send ``examples`` generated requests for one operation; fail on a 5xx (with a curl to replay it)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: Any) -> None:
        try:
            response = case.call(headers=AUTH)
        except Exception as exc:  # the app raised instead of answering
            raise AssertionError(f"{case.method} {case.formatted_path} raised {type(exc).__name__}: {exc}\n"
                                 f"{case.as_curl_command(headers=AUTH)}") from exc
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}\n"
            f"{case.as_curl_command(headers=AUTH)}")

    run()


def test_no_server_errors(api_schema: Any) -> None:
    operations = [r.ok() for r in api_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/chat/completions", "GET /v1/threads/{thread_id}/memory", "POST /graph/invoke",
            "POST /login", "GET /metrics"} <= labels
    failures = []
    for op in operations:
        for mode, n in ((GenerationMode.POSITIVE, POSITIVE), (GenerationMode.NEGATIVE, NEGATIVE)):
            try:
                fuzz(op, mode, n)
            except Unsatisfiable:  # nothing to break: the operation takes no input
                assert mode is GenerationMode.NEGATIVE, op.label
            except Exception as exc:  # collect them all, then fail once
                failures.append(f"{op.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
