#!/usr/bin/env bash
# Quick start 2: set up, then run the whole test suite (unit + integration against real redis-server and tansu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m pytest -q "$@"
