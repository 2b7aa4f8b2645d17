#!/usr/bin/env bash
# Set up the environment and the Fashion-MNIST data if needed, then run the
# offline benchmark (`cfmask demo`). Extra arguments go to `cfmask demo`,
# e.g. `bash scripts/run-demo.sh --quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
if ! .venv/bin/python -c "from cfmask.demo.data import find_fashion_mnist; find_fashion_mnist(None)" 2>/dev/null; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing Fashion-MNIST from Debian's dataset-fashion-mnist package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  fi
fi
export HF_HUB_OFFLINE=1 JSONARGPARSE_DEPRECATION_WARNINGS=off
exec .venv/bin/cfmask demo "$@"
