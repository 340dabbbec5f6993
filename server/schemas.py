"""OpenAI-shaped request models, errors and response pieces of the chat-completions API."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "developer", "user", "assistant"]
SYSTEM_ROLES = ("system", "developer")
_BAD_ID = re.compile(r"[\x00-\x1f\x7f/]")
MAX_ID_CHARS = 256


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        """The error as a JSON response."""
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(headers or {})})


def internal_error(request_id: str | None) -> APIError:
    """The 500 for an unexpected exception: a fixed message with the request id (the exception's text
    goes to the log, never to the client)."""
    rid = f" (request id {request_id}; the server log has the details)" if request_id else ""
    return APIError(500, f"internal error{rid}", type="server_error", code="internal_error")


class GraphInputError(ValueError):
    """An invalid input to the LangServe graph routes (answered as an HTTP error, not a 500)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class ContentPart(BaseModel):
    """One part of a multi-part message content (only text parts are supported)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One chat message; ``tool``/``function`` roles are not supported."""

    model_config = ConfigDict(extra="allow")
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None


class JSONSchemaSpec(BaseModel):
    """``response_format.json_schema``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    """``response_format``: text, JSON mode or a JSON schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


class StreamOptions(BaseModel):
    """``stream_options``."""

    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class GenerationParams(BaseModel):
    """The generation fields of a request, checked the same way on the OpenAI route and the graph routes."""

    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None

    def llm_params(self) -> dict[str, Any]:
        """Generation parameters for MemChat's ``llm_params`` (None values dropped)."""
        for stop in ([self.stop] if isinstance(self.stop, str) else self.stop or []):
            check_text(stop, "stop")
        fmt: dict[str, Any] | None = None
        if self.response_format is not None and self.response_format.type != "text":
            fmt = self.response_format.model_dump(by_alias=True, exclude_none=True)
            if self.response_format.type == "json_schema" and self.response_format.json_schema is None:
                raise APIError(400, "response_format json_schema needs a 'json_schema' object",
                               param="response_format.json_schema")
        params = {"response_format": fmt, "max_tokens": self.max_completion_tokens or self.max_tokens,
                  "temperature": self.temperature, "top_p": self.top_p, "stop": self.stop, "seed": self.seed}
        return {k: v for k, v in params.items() if v is not None and v != []}


class LLMParams(GenerationParams):
    """``configurable.llm_params`` of the graph routes (unknown keys refused)."""

    model_config = ConfigDict(extra="forbid")

    def params(self) -> dict[str, Any]:
        """The parameters for MemChat's ``llm_params``."""
        return self.llm_params()


class ChatCompletionRequest(GenerationParams):
    """The body of ``POST /v1/chat/completions`` (OpenAI's, plus memchat's ``thread_id``)."""

    model_config = ConfigDict(extra="ignore")
    model: str = "memchat"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    user: str | None = None
    thread_id: str | None = None
    memchat: dict[str, Any] | None = None  # memchat's extras (extra_body): {"context": "this request only"}
    tools: list[Any] | None = None
    functions: list[Any] | None = None

    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


def message_text(msg: ChatMessage, index: int) -> str:
    """Plain text of a message; non-text parts are rejected."""
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    out = []
    for part in msg.content:
        if part.type not in ("text", "input_text") or part.text is None:
            raise APIError(400, f"messages[{index}]: only text content parts are supported, not {part.type!r}",
                           param=f"messages.{index}.content", code="unsupported_content")
        out.append(part.text)
    return "".join(out)


def check_text(text: str, where: str) -> str:
    """Text that can be stored and tokenized: valid Unicode (no lone surrogates, which JSON allows as
    ``\\ud800`` escapes but UTF-8 cannot encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(400, f"{where}: invalid Unicode (a lone surrogate at character {exc.start})",
                       param=where.replace("[", ".").replace("]", ""), code="invalid_text") from exc
    return text


def check_id(value: str | None, what: str) -> str | None:
    """Validate a thread or user id (non-empty, no control characters or '/', at most 256 chars)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    bad = len(value) > MAX_ID_CHARS or bool(_BAD_ID.search(value))
    if not bad:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            bad = True
    if bad:
        raise APIError(400, f"invalid {what}: at most {MAX_ID_CHARS} characters, no '/' or control characters",
                       param=what)
    return value


USER_REQUIRED = ("a user id is required (MEMCHAT_REQUIRE_USER): send the OpenAI `user` field or the X-User-ID "
                 "header (LangServe: configurable.user_id)")


def new_completion_id() -> str:
    """A fresh ``chatcmpl-…`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage_block(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None) -> dict[str, Any]:
    """OpenAI ``usage`` with ``prompt_tokens_details.cached_tokens``."""
    return {
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "total_tokens": int(prompt_tokens) + int(completion_tokens),
        "prompt_tokens_details": {"cached_tokens": int(cached_tokens or 0)},
    }


def completion_body(cid: str, model: str, reply: str, finish: str, usage: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object."""
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "logprobs": None,
                     "finish_reason": finish}],
        "usage": usage,
    }
    if extra:
        body["memchat"] = extra
    return body


def chunk_body(cid: str, created: int, model: str, delta: dict[str, Any] | None, finish: str | None = None,
               usage: dict[str, Any] | None = None, with_usage_field: bool = False) -> dict[str, Any]:
    """A streamed ``chat.completion.chunk`` (``delta=None`` gives the usage-only chunk)."""
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": []}
    if delta is not None:
        body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    if with_usage_field or usage is not None:
        body["usage"] = usage
    return body
