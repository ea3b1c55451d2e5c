#!/usr/bin/env bash
# `make test` while a CPU hog keeps every core busy (stress-ng from Debian), as on a shared
# CI machine: a test that fails only here waits on a guess instead of on observed progress.
#
#   hack/loaded-test.sh [make variables, e.g. PYTEST_ARGS=-x]
#
# The hog runs at normal priority for as long as the tests do and is stopped with them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host-packages.sh" stress-ng:stress-ng
cores=$(nproc)
stress-ng --cpu "$cores" --cpu-method matrixprod --timeout 3h --quiet &
hog=$!
trap 'kill "$hog" 2>/dev/null || true; wait "$hog" 2>/dev/null || true' EXIT
echo "==> make test with stress-ng on $cores cores (pid $hog)"
make -C "$here/.." test "$@"
