#!/usr/bin/env bash
# Prometheus for the monitoring tests, built from Go modules into $KUSTOS_BIN like the
# control plane (hack/build-tools.sh):
#
#   hack/prometheus.sh build       prometheus and promtool (cached: kept when --version matches)
#   hack/prometheus.sh path        where the binaries are (prints $KUSTOS_BIN)
#
# Prometheus 3.x is published to the Go module proxy as github.com/prometheus/prometheus
# v0.3MM.P for release 3.MM.P. Built without the `builtinassets` tag (no embedded web UI:
# the HTTP API works, the UI pages answer 404) and with `remove_all_sd,enable_kubernetes_sd`
# so only the Kubernetes service discovery is linked, not the ~25 cloud SDKs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.sh
. "$here/versions.sh"

PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
# v0.316.0 -> 3.16.0
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-$(sed -E 's/^v0\.3([0-9]{2})\.([0-9]+).*/3.\1.\2/; s/^3\.0([0-9])/3.\1/' \
  <<<"$PROMETHEUS_MODULE_VERSION")}
export PROMETHEUS_MODULE_VERSION PROMETHEUS_VERSION

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
work="$KUSTOS_CACHE/build"

log() { printf '[prometheus %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# have NAME: cached and `NAME --version` names this release
have() {
  local out
  [ -x "$KUSTOS_BIN/$1" ] || return 1
  out=$("$KUSTOS_BIN/$1" --version 2>&1) || return 1
  [[ $out == *"version $PROMETHEUS_VERSION "* ]]
}

build() {
  local need=() b
  for b in prometheus promtool; do have "$b" || need+=("$b"); done
  [ ${#need[@]} -eq 0 ] && { log "prometheus $PROMETHEUS_VERSION cached in $KUSTOS_BIN"; return; }
  log "building ${need[*]} $PROMETHEUS_VERSION from github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION (first time: several minutes on 2 cores)"
  mkdir -p "$KUSTOS_BIN" "$work"
  local dir="$work/prometheus-$PROMETHEUS_MODULE_VERSION"
  mkdir -p "$dir"
  # A throwaway module requiring the release, so `go build` resolves its own go.sum graph.
  {
    echo "module kustos.dev/hack/prometheus"
    echo
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo
    echo "require github.com/prometheus/prometheus $PROMETHEUS_MODULE_VERSION"
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
GO
  (cd "$dir" && { go mod tidy >/dev/null 2>&1 || go mod tidy; })
  local v=github.com/prometheus/common/version
  local ld="-s -w -X $v.Version=$PROMETHEUS_VERSION -X $v.Revision=$PROMETHEUS_MODULE_VERSION"
  ld+=" -X $v.Branch=module -X $v.BuildUser=kustos -X $v.BuildDate=19700101-00:00:00"
  for b in "${need[@]}"; do
    log "go build $b"
    (cd "$dir" && go build -trimpath -tags remove_all_sd,enable_kubernetes_sd -ldflags "$ld" \
       -o "$KUSTOS_BIN/$b.tmp" "github.com/prometheus/prometheus/cmd/$b")
    mv "$KUSTOS_BIN/$b.tmp" "$KUSTOS_BIN/$b"
  done
  have prometheus && have promtool || { log "built binaries do not report $PROMETHEUS_VERSION"; exit 1; }
  log "prometheus and promtool $PROMETHEUS_VERSION in $KUSTOS_BIN"
}

case "${1:-build}" in
  build) build ;;
  path) echo "$KUSTOS_BIN" ;;
  *) echo "usage: $0 build|path" >&2; exit 2 ;;
esac
