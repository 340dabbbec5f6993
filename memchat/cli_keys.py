"""``memchat keys``: tenant API keys in ``MEMCHAT_API_KEYS_FILE`` (see :mod:`memchat.server.keys`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from memchat.server.keys import KeyStore

keys_app = typer.Typer(help="Tenant API keys: each may act only for its users.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

FileOption = Annotated[Path | None, typer.Option("--file", help="Keys file (default: MEMCHAT_API_KEYS_FILE)")]


def _store(path: Path | None) -> KeyStore:
    from memchat.server.keys import KeyStore
    from memchat.settings import Settings

    path = path or Settings().api_keys_file
    if path is None:
        err.print("[bold red]error:[/] no keys file: pass --file or set MEMCHAT_API_KEYS_FILE")
        raise typer.Exit(2)
    return KeyStore(path)


@keys_app.command("add")
def add(name: Annotated[str, typer.Argument(help="Name of the key (for list / revoke)")],
        users: Annotated[str, typer.Option("--users", help="Comma-separated users; the first is the default")],
        file: FileOption = None) -> None:
    """Create a key for USERS and print it once (the last line); only its hash is stored."""
    store = _store(file)
    try:
        key = store.add(name, [u.strip() for u in users.split(",")])
    except (ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"key {name!r} for {users} added to {store.path}; it is shown only now:", highlight=False)
    print(key)


@keys_app.command("list")
def list_keys(file: FileOption = None,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the keys (names, users, creation time; never the keys)."""
    from memchat.server.keys import describe

    store = _store(file)
    try:
        rows = [describe(k) for k in store.entries()]
    except (ValueError, OSError, KeyError, TypeError) as exc:
        err.print(f"[bold red]error:[/] {store.path} is not a valid keys file: {exc}")
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title=str(store.path))
    for col in ("name", "users", "created (UTC)"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], ", ".join(row["users"]), row["created"])
    console.print(table)


@keys_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="Name of the key")], file: FileOption = None) -> None:
    """Remove a key: the server refuses it (and its sessions) from the next request on."""
    store = _store(file)
    try:
        found = store.revoke(name)
    except (ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if not found:
        err.print(f"[bold red]error:[/] no key named {name!r}")
        raise typer.Exit(1)
    console.print(f"key {name!r} revoked")
