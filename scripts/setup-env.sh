#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything
# cfmask needs for tests, docs, the demo and development. Idempotent: a second run
# only checks that the install is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cfmask-installed
want=$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing cfmask[dev] with pinned torch (first run takes a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c scripts/constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import torch, torchvision, lightning, timm, open_clip, cfmask; print('==> environment ready: torch', torch.__version__, '| cfmask', cfmask.__version__)"
