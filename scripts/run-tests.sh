#!/usr/bin/env bash
# Set up the environment if needed, then run the default (fast, offline) test suite.
# Extra arguments go to pytest, e.g. `bash scripts/run-tests.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export HF_HUB_OFFLINE=1 JSONARGPARSE_DEPRECATION_WARNINGS=off
exec .venv/bin/python -m pytest "$@"
