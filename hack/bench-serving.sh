#!/usr/bin/env bash
# Serving benchmark: kustos serve vs MLServer vs a bare-minimum baseline (see
# tests/bench/bench_serving.py). Not part of `make test`.
#
#   hack/bench-serving.sh [--quick] [--output docs/benchmarks.md] [other bench flags]
#
# Installs wrk from Debian when it is missing; MLServer's venv is built on first use under
# ${KUSTOS_CACHE:-~/.cache/kustos}/venvs/mlserver.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
  echo "bench-serving: installing wrk" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk >/dev/null
fi

PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  echo "bench-serving: $PY not found; run 'make dev' first (or set PYTHON)" >&2
  exit 2
fi
KUSTOS_BENCH_LAUNCHER=hack/bench-serving.sh exec "$PY" tests/bench/bench_serving.py "$@"
