"""Structured logging for memchat: JSON lines with a request id, via the standard ``logging`` module.

* :data:`request_id_var` holds the id of the request being served (set by the server's request
  middleware, carried into worker threads with :func:`contextvars.copy_context`), so every log line
  written while serving it (the server's, the nodes', the libraries') carries ``request_id``.
* :class:`JSONFormatter` writes one JSON object per line: ``ts``, ``level``, ``logger``, ``msg``,
  ``request_id`` when set, the record's ``extra`` fields, and ``exc`` for a traceback.
* :func:`configure_logging` installs it (``MEMCHAT_LOG_FORMAT=json|text``, ``MEMCHAT_LOG_LEVEL``).

Message content is never logged at INFO or above by memchat; ``MEMCHAT_LOG_LEVEL=DEBUG`` adds it (the
``memchat.turn`` logger). Third-party loggers (HTTP clients, openai, chromadb, ...) stay at WARNING.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("memchat_request_id", default=None)

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# attributes every LogRecord has; anything else on a record came in through ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName", "request_id", "rid", "color_message"}


def _install_record_factory() -> None:
    """Stamp every log record with the current request id when it is created (in the thread and context
    that logs it), so handlers that format later, or elsewhere, still see it."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_memchat", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return record

    factory._memchat = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_install_record_factory()


def new_request_id() -> str:
    """A fresh request id (32 hex characters)."""
    return uuid.uuid4().hex


def clean_request_id(value: str | None) -> str:
    """The client's ``X-Request-ID`` when it is safe to echo and log (1–128 of ``A-Za-z0-9._:-``),
    else a fresh id."""
    if value and _REQUEST_ID_OK.match(value):
        return value
    return new_request_id()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JSONFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, request_id, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = _jsonable(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the request id (``MEMCHAT_LOG_FORMAT=text``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None) or request_id_var.get()
        record.rid = f" [{rid}]" if rid else ""
        return super().format(record)


def make_formatter(fmt: str | None = None) -> logging.Formatter:
    """The formatter for ``fmt`` (``json`` by default, or ``text``)."""
    fmt = (fmt or os.environ.get("MEMCHAT_LOG_FORMAT") or "json").strip().lower()
    return TextFormatter() if fmt == "text" else JSONFormatter()


def configure_logging(fmt: str | None = None, level: str | int | None = None) -> logging.Handler:
    """Send all logs (root logger) to stderr through one handler with the memchat formatter.

    ``fmt``: ``json`` (default, ``MEMCHAT_LOG_FORMAT``) or ``text``; ``level``: ``MEMCHAT_LOG_LEVEL``
    (default INFO) for the memchat loggers. Noisy libraries stay at WARNING."""
    level = level or os.environ.get("MEMCHAT_LOG_LEVEL") or "INFO"
    if isinstance(level, str):
        level = logging.getLevelName(level.strip().upper())
        if not isinstance(level, int):
            level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    handler.set_name("memchat")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(min(level, logging.WARNING))
    logging.captureWarnings(True)  # Python warnings become log lines too (logger py.warnings)
    logging.getLogger("memchat").setLevel(level)
    for name in ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "chromadb", "sentence_transformers",
                 "transformers", "urllib3", "langchain", "langserve"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return handler


def uvicorn_log_config(fmt: str | None = None, level: str | int | None = None) -> dict[str, Any]:
    """``log_config`` for uvicorn: its server messages through the memchat formatter; its access log off
    (the memchat request middleware writes one line per request, with the request id)."""
    kind = (fmt or os.environ.get("MEMCHAT_LOG_FORMAT") or "json").strip().lower()
    factory = "memchat.backends.observability.TextFormatter" if kind == "text" else "memchat.backends.observability.JSONFormatter"
    lvl = level if isinstance(level, str) else logging.getLevelName(level or logging.INFO)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"memchat": {"()": factory}},
        "handlers": {"memchat": {"class": "logging.StreamHandler", "formatter": "memchat",
                                 "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["memchat"], "level": str(lvl).upper(), "propagate": False},
            "uvicorn.error": {"level": str(lvl).upper()},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
