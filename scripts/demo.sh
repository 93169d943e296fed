#!/usr/bin/env bash
# Quick start 1: set up, then run the detector end to end on held-out HDFS logs (embedded broker + Redis).
# Extra arguments go to `logad demo` (e.g. --workers 2 --format json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec logad demo "$@"
