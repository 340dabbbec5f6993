"""The ``memchat`` command line: chat, serve, bench, reindex, memory, keys."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from memchat.cli_keys import keys_app

app = typer.Typer(help="memchat: long-term memory for multi-turn LLM chat.", no_args_is_help=True,
                  add_completion=False)
console = Console()
err = Console(stderr=True)
app.add_typer(keys_app, name="keys")


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "chromadb", "sentence_transformers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:
        pass


def _fail(msg: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def print_memory(mem: dict[str, Any]) -> None:
    """Render a thread's slots and summaries."""
    t = Table(title=f"slots — thread {mem['thread_id']} ({mem['turns']} turns)")
    for col in ("kind", "key", "value", "turn", "source"):
        t.add_column(col)
    for s in mem["slots"]:
        t.add_row(str(s.get("kind")), s["key"].split(":", 1)[-1], str(s.get("value")), str(s.get("turn")),
                  str(s.get("source")))
    console.print(t)
    if mem["l1"]:
        console.print("[bold]L1[/]")
        for b in mem["l1"]:
            console.print(f"  turns {b['from_turn']}–{b['to_turn']}: {b['text']}")
    console.print("[bold]L2[/] " + (json.dumps(mem["l2"], ensure_ascii=False, indent=1) if mem["l2"] else "(none)"))


@app.command()
def chat(
    thread: Annotated[str, typer.Option("--thread", "-t", help="Thread id (continues across runs)")] = "default",
    user: Annotated[str, typer.Option("--user", "-u", help="User id (scopes long-term memory)")] = "anonymous",
    system: Annotated[str | None, typer.Option("--system", help="Persona / system prompt for this thread")] = None,
) -> None:
    """Chat in the terminal with streamed replies. /memory shows the thread's memory, /exit quits.

    When stdin is not a terminal, reads one message per line (scriptable)."""
    _quiet()
    from memchat.backends.llm import BackendError
    from memchat.backends.local_server import LLMStartupError
    from memchat.backends.vectorstore import EmbedderMismatch
    from memchat.chat import MemChat
    from memchat.settings import get_settings

    interactive = sys.stdin.isatty()
    try:
        mc = MemChat(get_settings())
        if mc.recover(thread):
            err.print("[yellow]an unfinished turn was rolled back[/]")
    except (LLMStartupError, BackendError, EmbedderMismatch, RuntimeError) as exc:
        _fail(str(exc))
        return
    st = mc.state(thread)
    if interactive:
        console.print(f"[dim]memchat — thread [bold]{thread}[/] ({int(st.get('turn') or 0)} turns so far). "
                      "/memory, /exit[/]")
    persona = system
    while True:
        try:
            line = console.input("[bold green]you> [/]") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            break
        if not interactive and line == "":
            break
        msg = line.strip()
        if not msg:
            continue
        if msg in ("/exit", "/quit"):
            break
        if msg == "/memory":
            print_memory(mc.memory(thread))
            continue
        if msg == "/context":
            console.print_json(data=mc.context(thread).get("sections", {}))
            continue
        console.print("[bold cyan]assistant>[/] ", end="")
        try:
            mc.turn(thread, msg, user_id=user, persona=persona,
                    on_token=lambda tok: console.print(tok, end="", markup=False, highlight=False))
            persona = None
        except (LLMStartupError, BackendError) as exc:
            console.print()
            _fail(f"{exc} (the turn was not saved)")
        except Exception as exc:
            console.print()
            _fail(f"{type(exc).__name__}: {exc} (the turn was not saved)")
        console.print()


@app.command()
def memory(thread: Annotated[str, typer.Option("--thread", "-t")] = "default",
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print a thread's slots, L1 and L2."""
    _quiet()
    from memchat.chat import MemChat
    from memchat.settings import get_settings

    try:
        mem = MemChat(get_settings()).memory(thread)
    except RuntimeError as exc:
        _fail(str(exc))
        return
    if as_json:
        print(json.dumps(mem, ensure_ascii=False, default=str))
    else:
        print_memory(mem)


@app.command()
def serve(host: Annotated[str, typer.Option()] = "127.0.0.1", port: Annotated[int, typer.Option()] = 8000,
          workers: Annotated[int, typer.Option(min=0, help="processes sharing the port (0 = MEMCHAT_WORKERS, 1); "
                                               "more than 1 needs an LLM server (MEMCHAT_LLM_BASE_URL)")] = 0
          ) -> None:
    """Serve the OpenAI-compatible API, LangServe routes and the web chat page."""
    _quiet()
    try:
        from memchat.server.app import run
    except ImportError as exc:
        _fail(f"the server is not available: {exc}")
        return
    try:
        run(host=host, port=port, workers=workers)
    except RuntimeError as exc:
        _fail(str(exc))


@app.command()
def check() -> None:
    """Check every configured backend (LLM, checkpoints, store, vector memory) and exit non-zero on failure."""
    _quiet()
    from memchat.backends import backend_check

    raise typer.Exit(backend_check.main())


@app.command()
def reindex(batch: Annotated[int, typer.Option(help="Documents per batch")] = 256,
            from_store: Annotated[str, typer.Option("--from", help="copy from this store kind (chroma | milvus) "
                                                    "into the configured MEMCHAT_VECTOR_STORE")] = "") -> None:
    """Re-embed the vector store with the configured MEMCHAT_EMBEDDING_MODEL (or copy from the other store)."""
    _quiet()
    from memchat.backends.reindex import copy_store
    from memchat.backends.reindex import reindex as do_reindex
    from memchat.settings import get_settings

    if from_store and from_store not in ("chroma", "milvus"):
        _fail(f"--from wants chroma or milvus, got {from_store!r}", 2)
        return
    try:
        if from_store:
            n = copy_store(get_settings(), from_store, batch=batch)
        else:
            n = do_reindex(get_settings(), batch=batch)
    except (RuntimeError, ValueError) as exc:
        _fail(str(exc))
        return
    console.print(f"copied {n} memories from {from_store}" if from_store else f"re-embedded {n} memories")


@app.command("import")
def import_(file: Annotated[str, typer.Argument(help="JSONL: one conversation per line, "
                                                     '{"thread_id", "user", "messages": [{"role", "content"}]}')],
            summaries: Annotated[bool, typer.Option(help="LLM summaries for folded turns (else extractive)")] = True
            ) -> None:
    """Import conversations held elsewhere as new threads (their turns become past turns; progress bar)."""
    _quiet()
    from memchat.chat import MemChat
    from memchat.importer import import_file
    from memchat.settings import get_settings

    try:
        res = import_file(MemChat(get_settings()), file, llm=summaries)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
        return
    console.print(f"imported {res['turns']} turns into {res['threads']} threads"
                  + (f"; {res['skipped']} existing threads skipped" if res["skipped"] else ""))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context, name: Annotated[str, typer.Argument(help="locomo | prefix | overhead | ttft | load | slots")]
          ) -> None:
    """Run a benchmark (prints a table; --json adds one JSON object as the last line)."""
    _quiet()
    import importlib

    try:
        mod = importlib.import_module(f"memchat.bench.{name}")
    except ModuleNotFoundError:
        _fail(f"unknown benchmark {name!r}")
        return
    code = mod.main(list(ctx.args))
    raise typer.Exit(int(code or 0))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
