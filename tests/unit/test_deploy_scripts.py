"""The SGLang deploy scripts: bash -n, shellcheck, and the commands they would launch (DRY_RUN)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "deploy").rglob("*.sh")) + sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_bash_n_and_shellcheck(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing (scripts/setup.sh --system installs it)")
        pytest.skip("shellcheck not installed")
    r = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, cwd=script.parent)
    assert r.returncode == 0, r.stdout


def dry_run(name: str, **env: str) -> str:
    e = dict(os.environ, SGLANG_API_KEY="k", DRY_RUN="1", **env)
    r = subprocess.run(["bash", str(ROOT / "deploy" / "sglang" / name)], capture_output=True, text=True, env=e,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def test_commands() -> None:
    dp4 = dry_run("dp4_router.sh")
    assert "sglang_router.launch_server" in dp4 and "--dp-size 4" in dp4 and "--router-policy cache_aware" in dp4
    one = dry_run("single_gpu.sh")
    assert "sglang.launch_server" in one and "--context-length 32768" in one
    tp = dry_run("tp_no_p2p.sh")
    assert "--tp-size" in tp and "--disable-custom-all-reduce" in tp
    for out in (dp4, one, tp):
        assert "--enable-cache-report" in out and '--api-key "$SGLANG_API_KEY"' in out
        assert "MEMCHAT_LLM_BASE_URL=http://" in out
    yarn = dry_run("single_gpu.sh", LONG_CONTEXT="1")
    assert "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1" in yarn and "--context-length 131072" in yarn
    assert '"rope_type":"yarn"' in yarn and '"factor":4.0' in yarn and '"original_max_position_embeddings":32768' in yarn
