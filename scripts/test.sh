#!/usr/bin/env bash
# Quick start 2: set up, then run the tests.
#   scripts/test.sh           the whole suite: unit tests, and integration tests against a real broker (tansu) and
#                             redis-server, in parallel (LOGAD_TEST_WORKERS processes, default 3; 0: one process)
#   scripts/test.sh --fast    unit tests only: no broker, no redis-server, no model trained past a few steps
#   scripts/test.sh --lint    ruff, and mypy (strict on logbert_core), then stop
# Further arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# One torch thread per test process (the trainings the tests start inherit it): several test processes on two cores,
# each training with a thread per core, thrash (a 13 s test took 96 s). Set OMP_NUM_THREADS to override.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
case "${1:-}" in
  --lint)
    ruff check .
    mypy --strict logbert_core
    exec mypy streamer training benchmarks ;;
  --fast)
    shift
    exec python -m pytest -q -n 2 -m "not integration and not slow" "$@" ;;
  *)
    # --dist loadfile: a file's tests share one process (module fixtures, and metrics one test reads after another)
    exec python -m pytest -q -n "${LOGAD_TEST_WORKERS:-3}" --dist loadfile "$@" ;;
esac
