"""The walkthrough notebook runs top to bottom on the embedded default (real Gemma 3 270M), and is kept
without outputs in git."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "memory_walkthrough.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_notebook_executes(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    root = NOTEBOOK.parent.parent
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(root) + (os.pathsep + env_path if env_path else "")
    try:
        # the "python3" kernel is this interpreter (the venv's), so the notebook sees memchat
        client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(root)}})
        client.execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
    text = "\n".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "mean prefix reuse" in text
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
