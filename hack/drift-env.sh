#!/usr/bin/env bash
# The drift sidecar's own virtual environment: alibi-detect pins numpy < 2, the main
# .venv has numpy 2 (shap), so `kustos drift` runs from a venv of its own.
#
#   hack/drift-env.sh [REPO]      # prints the venv's path on stdout (progress on stderr)
#
# The venv lives in ${KUSTOS_CACHE:-~/.cache/kustos}/venvs/drift-<key>/, where <key> hashes
# images/drift-requirements.txt, this script, the Python version and the repository path
# (kustos is installed editable from REPO, so the repo's code changes need no rebuild).
# A changed key builds a new venv and removes this repository's older drift-* ones (other
# clones keep theirs). The venv is used only after its marker file is written, so an
# interrupted build is redone; a lock keeps two concurrent callers from building it twice.
# Environment: PYTHON (python3.11 or python3), KUSTOS_CACHE.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${1:-$HERE/..}" && pwd)"
REQUIREMENTS="$REPO/images/drift-requirements.txt"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
CACHE="${KUSTOS_CACHE:-$HOME/.cache/kustos}/venvs"
MARKER=".kustos-venv.json"

[[ -f "$REQUIREMENTS" ]] || { echo "drift-env: $REQUIREMENTS not found" >&2; exit 1; }
version="$("$PYTHON" -c 'import sys; print(sys.version)')"
case "$version" in
  3.11.*) ;;
  *) echo "drift-env: need Python 3.11 (alibi-detect's pins), $PYTHON is $version" >&2; exit 1 ;;
esac
key="$({ printf '%s\n%s\n' "$version" "$REPO"; cat "$REQUIREMENTS" "${BASH_SOURCE[0]}"; } \
  | sha256sum | cut -c1-16)"
VENV="$CACHE/drift-$key"

mkdir -p "$CACHE"
exec 9>"$CACHE/drift.lock"
flock 9
if [[ -f "$VENV/$MARKER" && -x "$VENV/bin/kustos" ]]; then
  echo "$VENV"
  exit 0
fi

echo "drift-env: building $VENV (log: $CACHE/drift.build.log)" >&2
rm -rf "$VENV"
for old in "$CACHE"/drift-*/; do  # this repo's superseded or unfinished builds: ~2.4 GB each
  [[ -d "$old" && "${old%/}" != "$VENV" ]] || continue
  if [[ ! -f "$old/$MARKER" ]] || grep -qF "\"repo\": \"$REPO\"" "$old/$MARKER"; then
    rm -rf "$old"
  fi
done
started=$SECONDS
{
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --no-input --disable-pip-version-check --progress-bar off \
    --no-deps -r "$REQUIREMENTS"
  # setuptools for the editable build comes from pyproject's [build-system] (isolated).
  "$VENV/bin/python" -m pip install --no-input --disable-pip-version-check --progress-bar off \
    --no-deps -e "$REPO"
  "$VENV/bin/python" -c 'import alibi_detect, numpy, kustos.runtime.drift.cli'
} >"$CACHE/drift.build.log" 2>&1 || {
  echo "drift-env: build failed; last lines of $CACHE/drift.build.log:" >&2
  tail -n 30 "$CACHE/drift.build.log" >&2
  rm -rf "$VENV"
  exit 1
}
seconds=$((SECONDS - started))
size="$(du -sm "$VENV" | cut -f1)"
printf '{"key": "%s", "repo": "%s", "build_seconds": %d, "size_mb": %d}\n' \
  "$key" "$REPO" "$seconds" "$size" >"$VENV/$MARKER"
echo "drift-env: built in ${seconds}s, ${size} MB" >&2
echo "$VENV"
