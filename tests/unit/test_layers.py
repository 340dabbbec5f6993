"""The layer rule (docs/architecture.md): a module imports only its own layer or lower ones; nodes never
import each other (except ``memchat.nodes.common``); the installed package puts nothing at the top level but
``memchat``."""

from __future__ import annotations

import ast
import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "memchat"

# lower number = lower layer
LAYERS: dict[str, int] = {
    "memchat.settings": 0, "memchat.prompts": 0,
    "memchat.memory": 1,
    "memchat.backends": 2,
    "memchat.nodes": 3,
    "memchat.graph": 4,
    "memchat.chat": 5, "memchat.forgetting": 5, "memchat.importer": 5,
    "memchat.server": 6,
    "memchat.bench": 7,
    "memchat.cli": 8, "memchat.cli_keys": 8, "memchat.__main__": 8,  # the console entry: serve, bench, keys
    "memchat": 9,  # the front door re-exports (lazily) from every layer
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")


def py_files() -> list[Path]:
    """Every .py file of the package, through the checkout's symlinks (memchat/graph -> ../graph, ...)."""
    return sorted(Path(d) / f for d, _, fs in os.walk(PKG, followlinks=True) for f in fs if f.endswith(".py"))


def modules() -> dict[str, Path]:
    out = {}
    for f in py_files():
        rel = f.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["memchat", *parts])] = f
    return out


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute memchat import, including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names[:1]]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(ln, m) for ln, m in found if m == "memchat" or m.startswith("memchat.")]


def violations() -> list[str]:
    bad = []
    for mod, path in modules().items():
        own = layer(mod)
        for line, target in imports(path):
            if target == "memchat" and mod != "memchat":
                bad.append(f"{mod}:{line} imports the front door `memchat`; import the module that defines it")
            elif layer(target) > own:
                bad.append(f"{mod}:{line} (layer {own}) imports {target} (layer {layer(target)})")
            elif (mod.startswith("memchat.nodes.") and target.startswith("memchat.nodes.")
                  and target != "memchat.nodes.common" and not mod.endswith(".common")):
                bad.append(f"{mod}:{line} imports another node, {target}")
    return bad


def test_every_module_belongs_to_a_layer_and_imports_only_downward() -> None:
    assert len(modules()) > 60  # the symlinked folders are walked too
    assert violations() == []


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from memchat.server.app import create_app\n", encoding="utf-8")
    assert imports(f) == [(2, "memchat.server.app")]
    assert layer("memchat.server.app") > layer("memchat.memory.slots")


def test_the_installed_package_is_only_memchat() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    st = conf["tool"]["setuptools"]
    assert all(p == "memchat" or p.startswith("memchat.") for p in st["packages"])
    assert conf["project"]["scripts"]["memchat"] == "memchat.cli:main"
    for name, folder in st["package-dir"].items():
        assert (ROOT / folder / "__init__.py").is_file(), folder
        link = PKG / name.split(".", 1)[1]  # the checkout sees the same folder as memchat.<name>
        assert link.resolve() == (ROOT / folder).resolve(), link
    on_disk = {".".join(["memchat", *p.relative_to(PKG).parts[:-1]]) for p in py_files() if p.name == "__init__.py"}
    assert {m for m in on_disk if m.count(".") <= 1} <= set(st["packages"])
