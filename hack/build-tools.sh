#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok) and helm from Go modules into a cache outside the repository;
# `hack/build-tools.sh node` builds the real node's kubelet, kube-proxy and coredns.
# Idempotent: a binary that is already in the cache and answers --version is kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.sh
. "$here/versions.sh"

mkdir -p "$KUSTOS_BIN"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
work="$KUSTOS_CACHE/build"
mkdir -p "$work"

log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# have NAME WANT [ARG]: NAME is cached and `NAME ARG` (default --version) mentions WANT, so a
# version bump in versions.sh rebuilds it (the cache directory is keyed by K8S_VERSION only).
have() {
  local out
  [ -x "$KUSTOS_BIN/$1" ] || return 1
  out=$("$KUSTOS_BIN/$1" "${3:---version}" 2>&1) || return 1
  [[ $out == *"$2"* ]]
}

# wrapper DIR MODULE VERSION [REPLACES...]: a throwaway module that requires MODULE@VERSION
# and imports the main packages we build, so `go build` resolves one consistent graph.
wrapper() {
  local dir=$1 mod=$2 ver=$3; shift 3
  mkdir -p "$dir"
  {
    echo "module kustos.dev/hack/$(basename "$dir")"
    echo
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo
    echo "require $mod $ver"
    for r in "$@"; do echo "replace $r"; done
  } >"$dir/go.mod"
}

# tools DIR PKG...: a tools.go that keeps the main packages in the module graph for `go mod tidy`.
tools() {
  local dir=$1; shift
  {
    echo '//go:build tools'
    echo
    echo 'package tools'
    echo
    echo 'import ('
    for p in "$@"; do echo "	_ \"$p\""; done
    echo ')'
  } >"$dir/tools.go"
}

build_kubernetes() { k8s_binaries kube-apiserver kube-controller-manager kube-scheduler; }

# the real node (hack/node.sh): same module graph as the control plane, so the Go cache is shared
build_node() {
  k8s_binaries kubelet kube-proxy
  build_coredns
}

# every main package the wrapper may build, so tools.go (and go.mod) are the same whichever
# subset is being built
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

# k8s_binaries NAME...: builds the missing ones of k8s.io/kubernetes/cmd/NAME
k8s_binaries() {
  local need=() b
  for b in "$@"; do have "$b" "Kubernetes $K8S_VERSION" || need+=("$b"); done
  [ ${#need[@]} -eq 0 ] && { log "kubernetes $K8S_VERSION binaries cached: $*"; return; }
  log "building ${need[*]} from k8s.io/kubernetes@$K8S_VERSION (first time: about 10 min on 2 cores with the modules downloaded, longer without)"
  local dir="$work/kubernetes-$K8S_VERSION"
  go mod download k8s.io/kubernetes@"$K8S_VERSION"
  local gomod
  gomod=$(go mod download -json k8s.io/kubernetes@"$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  # k8s.io/kubernetes replaces every staging module with ./staging/...; the published
  # equivalents are tagged v0.<minor>.<patch>.
  local staging_ver="v0.${K8S_VERSION#v1.}"
  local replaces=()
  while read -r m; do replaces+=("$m => $m $staging_ver"); done < <(
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod" | sort -u)
  wrapper "$dir" k8s.io/kubernetes "$K8S_VERSION" "${replaces[@]}"
  local pkgs=()
  for b in "${K8S_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  tools "$dir" "${pkgs[@]}"
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  local major=${K8S_VERSION#v}; major=${major%%.*}
  local minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  local ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for b in "${need[@]}"; do
    log "go build $b"
    (cd "$dir" && go build -trimpath -ldflags "-s -w $ld" -o "$KUSTOS_BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b")
    mv "$KUSTOS_BIN/$b.tmp" "$KUSTOS_BIN/$b"
  done
}

build_etcd() {
  have etcd "etcd Version: ${ETCD_VERSION#v}" && { log "etcd cached"; return; }
  log "building etcd $ETCD_VERSION"
  local dir="$work/etcd-$ETCD_VERSION"
  local ev=$ETCD_VERSION
  # server/v3's own go.mod replaces its siblings with ../paths; point them at the tags.
  wrapper "$dir" go.etcd.io/etcd/server/v3 "$ev" \
    "go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ev" \
    "go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ev" \
    "go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ev" \
    "go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ev"
  tools "$dir" go.etcd.io/etcd/server/v3
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$KUSTOS_BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$KUSTOS_BIN/etcd.tmp" "$KUSTOS_BIN/etcd"
}

build_kwok() {
  have kwok "kwok version $KWOK_VERSION " && { log "kwok cached"; return; }
  log "building kwok $KWOK_VERSION"
  local dir="$work/kwok-$KWOK_VERSION"
  wrapper "$dir" sigs.k8s.io/kwok "$KWOK_VERSION"
  tools "$dir" sigs.k8s.io/kwok/cmd/kwok
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  (cd "$dir" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
     -o "$KUSTOS_BIN/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok)
  mv "$KUSTOS_BIN/kwok.tmp" "$KUSTOS_BIN/kwok"
}

build_helm() {
  have helm "Version:\"$HELM_VERSION\"" version && { log "helm cached"; return; }
  log "building helm $HELM_VERSION"
  local dir="$work/helm-$HELM_VERSION"
  wrapper "$dir" helm.sh/helm/v3 "$HELM_VERSION"
  tools "$dir" helm.sh/helm/v3/cmd/helm
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  (cd "$dir" && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
     -o "$KUSTOS_BIN/helm.tmp" helm.sh/helm/v3/cmd/helm)
  mv "$KUSTOS_BIN/helm.tmp" "$KUSTOS_BIN/helm"
}

# CoreDNS for the real node's pods: a main of our own that links only the plugins the
# Corefile of hack/node.sh uses (kubernetes, bind, errors, health, cache, log), not the ~50 of
# upstream's build, and in particular not forward: pods resolve cluster names and nothing else.
build_coredns() {
  have coredns "CoreDNS-${COREDNS_VERSION#v}" -version && { log "coredns cached"; return; }
  log "building coredns $COREDNS_VERSION (kubernetes plugin only)"
  local dir="$work/coredns-$COREDNS_VERSION"
  wrapper "$dir" github.com/coredns/coredns "$COREDNS_VERSION"
  cat >"$dir/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// the plugin order of a server block, a subset of upstream's plugin.cfg
func init() {
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
  rm -f "$dir/tools.go"
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$KUSTOS_BIN/coredns.tmp" .)
  mv "$KUSTOS_BIN/coredns.tmp" "$KUSTOS_BIN/coredns"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(etcd kwok kubernetes helm node)
for t in "${targets[@]}"; do "build_$t"; done
log "binaries in $KUSTOS_BIN"
