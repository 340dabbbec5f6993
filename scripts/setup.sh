#!/usr/bin/env bash
# Sets up .venv in the repository root: CPU torch first, a portable llama-cpp-python wheel (built once
# into a local wheelhouse), then memchat itself (editable) with its dev tools. Idempotent: a second
# run with an unchanged pyproject.toml takes seconds.  --system also installs the Debian packages the
# tests need (chromium, postgresql, shellcheck).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_VERSION=0.3.36
WHEELHOUSE=${MEMCHAT_WHEELHOUSE:-$HOME/.cache/memchat-wheels}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi

if [ "${1:-}" = "--system" ]; then
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)  # tests/support/services.py runs initdb/postgres
  command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
LOG=.venv/setup.log
pip_() {  # quiet pip; its output goes to .venv/setup.log and is shown only on failure
  if ! .venv/bin/python -m pip -q --disable-pip-version-check "$@" >>"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "setup: pip $* failed (full log: $LOG)" >&2
    exit 1
  fi
}
stamp=".venv/.memchat-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "setup: installing into .venv (log: $LOG)"
pip_ install --upgrade pip wheel setuptools
# CPU torch before anything that needs it (a plain `torch` requirement would pull a CUDA build).
pip_ install "torch==2.13.0"

# llama-cpp-python has no wheel on PyPI: build one portable (AVX2, no AMX/AVX-512, which some
# sandboxes fault on) wheel once, keep it in the wheelhouse, reuse it everywhere.
mkdir -p "$WHEELHOUSE"
if ! ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "setup: building llama-cpp-python $LLAMA_VERSION (first time only, ~10 min on 2 cores)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_BLAS=OFF" \
    pip_ wheel --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELHOUSE"
fi
wheel=$(find "$WHEELHOUSE" -maxdepth 1 -name "llama_cpp_python-$LLAMA_VERSION-*.whl" | head -1)
pip_ install --find-links "$WHEELHOUSE" "${wheel}[server]"
pip_ install --find-links "$WHEELHOUSE" -e ".[dev]"
.venv/bin/python -c "import llama_cpp, memchat.graph.builder, torch; assert torch.__version__.endswith('+cpu'), torch.__version__"
rm -f .venv/.memchat-setup-*
touch "$stamp"
echo "setup: ready (.venv)"
