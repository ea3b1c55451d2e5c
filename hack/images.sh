#!/usr/bin/env bash
# Build Kustos' container images without Docker or a registry, and import them into a
# containerd. The image table is images/images.toml; the builder is hack/image_build.py.
#
#   hack/images.sh [build] [NAME...]   build (cached in $KUSTOS_CACHE/images; a rerun with
#                                      nothing changed takes seconds)
#   hack/images.sh import [NAME...]    build, then import into the containerd at
#                                      $CONTAINERD_ADDRESS (a socket path), namespace k8s.io;
#                                      an image already there with the same digest is skipped;
#                                      --no-build: fail instead of building what is missing
#   hack/images.sh list                NAME REF ARCHIVE DIGEST of every built image
#
# Needs root (mmdebstrap, overlay mounts, chroot); installs its Debian prerequisites.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/versions.sh
source "$ROOT/hack/versions.sh"

if [[ $(id -u) -ne 0 ]]; then
  # The build mounts and chroots; keep the caller's cache location.
  exec sudo --preserve-env=KUSTOS_CACHE,CONTAINERD_ADDRESS,PIP_INDEX_URL,PIP_CERT \
    "$0" "$@"
fi

# The wheel is built with the project's venv when there is one (it has pip), else python3.
PY=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PY ]] || PY=python3

build() {
  "$ROOT/hack/host-packages.sh" images
  "$PY" "$ROOT/hack/image_build.py" build "$@"
}

import() {
  : "${CONTAINERD_ADDRESS:?set CONTAINERD_ADDRESS to the containerd socket}"
  "$ROOT/hack/host-packages.sh" ctr:containerd
  local ctr=(ctr --address "$CONTAINERD_ADDRESS" --namespace k8s.io)
  local out name ref archive digest
  if [[ ${1:-} == --no-build ]]; then
    shift
    out=$("$PY" "$ROOT/hack/image_build.py" build --check "$@")
  else
    out=$(build "$@")
  fi
  while read -r name ref archive digest; do
    if "${ctr[@]}" images ls "name==$ref" | grep -q " $digest "; then
      echo "==> $ref: already imported ($digest)" >&2
      continue
    fi
    echo "==> import $ref ($digest)" >&2
    # A superseded version under the same name: remove it with a synchronous garbage
    # collection, else its layers stay in the store (containerd collects on its own only
    # after many mutations; the drift image alone is 2.7 GB a version). A running
    # container keeps what it uses.
    if "${ctr[@]}" images ls -q "name==$ref" | grep -qx "$ref"; then
      "${ctr[@]}" images rm --sync "$ref" >/dev/null
    fi
    # Re-importing an image whose layers the previous one shares can race containerd's
    # garbage collector ("parent snapshot ... does not exist"): the next try unpacks again.
    local try
    for try in 1 2 3; do
      "${ctr[@]}" images import "$archive" >/dev/null && break
      ((try < 3)) || exit 1
      echo "==> import $ref: retrying" >&2
    done
    # The archive names the image after io.containerd.image.name; check it landed.
    "${ctr[@]}" images ls "name==$ref" | grep -q " $digest " \
      || { echo "images.sh: $ref is not $digest after the import" >&2; exit 1; }
  done <<<"$out"
  echo "$out"
}

cmd=${1:-build}
case $cmd in
  build) shift || true; build "$@" ;;
  import) shift; import "$@" ;;
  list) build ;;
  *) build "$@" ;;
esac
