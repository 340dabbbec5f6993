#!/usr/bin/env bash
# The test command (README, CI): sets everything up, then ruff, mypy and pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not e2e"`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 ANONYMIZED_TELEMETRY=False
echo "== ruff";   .venv/bin/ruff check .
echo "== mypy";   .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
