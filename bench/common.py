"""Shared helpers of the benchmarks: isolated settings, a stub chat model, output and plotting."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field
from rich.console import Console
from rich.table import Table

from memchat.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
T = TypeVar("T")

for _k, _v in (("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1"), ("ANONYMIZED_TELEMETRY", "False")):
    os.environ.setdefault(_k, _v)


def out_dir() -> Path:
    """``bench/out`` (gitignored), created on demand."""
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


def console() -> Console:
    """A stdout console wide enough that tables are not squeezed when piped."""
    return Console(width=max(140, Console().width), soft_wrap=False)


def emit(tables: list[Table], payload: dict[str, Any], as_json: bool, notes: list[str] | None = None) -> None:
    """Print the tables (and notes); with ``as_json`` the payload is the LAST stdout line."""
    con = console()
    for t in tables:
        con.print(t)
    for n in notes or []:
        con.print(n, markup=False, highlight=False)
    sys.stdout.flush()
    if as_json:
        print(json.dumps(payload, ensure_ascii=False, default=_jsonable), flush=True)


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def progress(it: Iterable[T], *, total: int | None = None, desc: str = "", quiet: bool = False) -> Iterator[T]:
    """A tqdm bar on stderr (off when ``quiet``)."""
    if quiet:
        yield from it
        return
    from tqdm import tqdm

    yield from tqdm(it, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


@contextmanager
def temp_data_dir(prefix: str) -> Iterator[Path]:
    """A fresh data dir per run, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"memchat-bench-{prefix}-") as d:
        yield Path(d)


def bench_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings isolated in ``data_dir``; the environment's ``MEMCHAT_*`` knobs still apply unless overridden.

    By default no real LLM is configured (a stub model is passed to the engine instead).
    """
    kw: dict[str, Any] = dict(data_dir=data_dir, llm_base_url="http://127.0.0.1:9/v1", llm_model="stub")
    if "MEMCHAT_LLM_EXTRACTION" not in os.environ:
        kw["llm_extraction"] = "false"  # the stub URL would turn the LLM tier on; benches measure the hot path
    kw.update(overrides)
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--set memory_top_k=30`` style Settings overrides (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, _, raw = pair.partition("=")
        if not key or not _:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: list[float]) -> float:
    """Arithmetic mean; 0 for no values."""
    return statistics.fmean(values) if values else 0.0


def plt() -> Any:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


class ScriptChatModel(BaseChatModel):
    """The offline chat models' shared half (the benches' stub, the tests' scripted model): ``_text`` decides
    the reply; it streams word by word and, with ``report_usage``, reports word-count usage."""

    report_usage: bool = True

    def _text(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        raise NotImplementedError

    @staticmethod
    def _usage(messages: list[BaseMessage], text: str) -> dict[str, Any]:
        n_in = sum(len(str(m.content).split()) for m in messages)
        n_out = len(text.split())
        return {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text = self._text(messages, kwargs)
        usage = self._usage(messages, text) if self.report_usage else None
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text, usage_metadata=usage))])  # type: ignore[arg-type]

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        text = self._text(messages, kwargs)
        for i, w in enumerate(text.split(" ")):
            piece = w if i == 0 else " " + w
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        if self.report_usage:
            usage = self._usage(messages, text)
            yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage))  # type: ignore[arg-type]


class StubChatModel(ScriptChatModel):
    """A deterministic offline chat model for benches: short replies, JSON for summaries, counts calls.

    Replies are derived from the last user line so the conversation is reproducible. Calls are
    counted by kind: ``summary`` when a ``response_format`` is bound (L1/L2 summaries), else ``respond``.
    """

    calls: dict[str, int] = Field(default_factory=lambda: {"respond": 0, "summary": 0})
    reply_words: int = 12
    report_usage: bool = False  # prompt tokens come from memchat's own count, as before

    @property
    def _llm_type(self) -> str:
        return "memchat-bench-stub"

    def _text(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        kind = "summary" if kwargs.get("response_format") else "respond"
        self.calls[kind] = self.calls.get(kind, 0) + 1
        if kind == "summary":
            fmt = kwargs["response_format"]
            schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
            if "summary" in (schema.get("properties") or {}):
                return json.dumps({"summary": "The user shared details and the assistant acknowledged them.",
                                   "facts": []})
            return json.dumps({"topics": ["the user's plans"], "decisions": [], "open_questions": [], "facts": []})
        last = str(messages[-1].content).strip().splitlines()[-1] if messages else ""
        words = last.split()[: self.reply_words]
        return "Noted: " + " ".join(words) if words else "Noted."
