"""Checks the turns sent to the graph's run routes (``/graph/invoke``, ``/stream``, ...) before LangServe
starts answering, so a bad body is a clean 400/413 and not an error event after the response began."""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memchat.server.admission import IDEMPOTENCY_HEADER
from memchat.server.langserve_routes import RUN_SUFFIXES, parse_turn
from memchat.server.schemas import APIError, GraphInputError

MAX_JSON_DEPTH = 64  # far more than a turn needs; deep bodies crash parsers and validators (RecursionError)


class GraphPrecheck:
    """Validates the turns sent to the graph's run routes before LangServe starts answering: LangServe's
    ``stream_log`` / ``stream_events`` would otherwise send an error event and then raise after the
    response started. A body that is not JSON is a 400; other shapes are left to LangServe (its 422)."""

    def __init__(self, app: ASGIApp, max_chars: int, path: str = "/graph", require_user: bool = False) -> None:
        self.app = app
        self.max_chars = max_chars
        self.require_user = require_user
        self.paths = {f"{path}{suffix}" for suffix in RUN_SUFFIXES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        principal = scope.get("state", {}).get("principal")
        error = self.check(body, Headers(scope=scope), scope["path"].endswith("/batch"),
                           getattr(principal, "users", None))
        if error is not None:
            await APIError(error.status, error.message, code=error.code).response()(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def check(self, body: bytes, headers: Headers, batch: bool, users: tuple[str, ...] | None = None
              ) -> GraphInputError | None:
        """The error to answer for this body, or ``None`` to let it through. A batch is checked whole, so
        that one bad item refuses the batch before any item runs (the good ones would commit). ``users``: a
        tenant key's users (the first is the default; an input naming another is a 403)."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep for the parser
            return GraphInputError(400, "the request body is not valid JSON (or is nested too deeply)")
        if json_depth(data) > MAX_JSON_DEPTH:
            return GraphInputError(400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
        if not isinstance(data, dict):
            return None
        try:
            inputs = data.get("inputs") if batch else [data.get("input")]
            configs = data.get("config")
            if not isinstance(inputs, list):
                return None
            configs = configs if isinstance(configs, list) else [configs] * len(inputs)
            for inp, config in zip(inputs, configs):
                if not isinstance(inp, dict):
                    return None
                conf = (config or {}).get("configurable") if isinstance(config, dict) else None
                conf = dict(conf) if isinstance(conf, dict) else {}
                for header, key in (("x-thread-id", "thread_id"), ("x-user-id", "user_id"),
                                    (IDEMPOTENCY_HEADER, "idempotency_key")):
                    if headers.get(header):
                        conf[key] = headers[header]
                if users and inp.get("user_id") not in (None, "", *users):
                    return GraphInputError(403, "this API key may not act for the input's user_id", code="forbidden")
                if users and not conf.get("user_id"):
                    conf["user_id"] = users[0]
                parse_turn(inp, conf, self.max_chars, self.require_user)
        except GraphInputError as exc:
            return exc
        except Exception:  # anything else is LangServe's to judge
            return None
        return None


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in parsed JSON (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest
