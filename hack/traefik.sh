#!/usr/bin/env bash
# Traefik v3 for the local cluster: a Gateway API implementation, so that a ModelDeployment's
# HTTPRoute (spec.gateway) splits a canary's traffic by the exact weights it names.
#
#   hack/traefik.sh build    build Traefik into $KUSTOS_BIN (idempotent)
#   hack/traefik.sh start    build if missing; the Gateway API CRDs (standard channel, from
#                            the sigs.k8s.io/gateway-api module Traefik requires), Traefik's
#                            RBAC, its client certificate; start Traefik; a GatewayClass and
#                            the Gateway traefik/kustos (no-op when they serve)
#   hack/traefik.sh stop     stop Traefik (CRDs, GatewayClass and Gateway kept)
#   hack/traefik.sh status   exit 0 only if Traefik runs, answers its ping and the Gateway
#                            is Programmed
#
# Traefik runs as a host process, like KEDA and metrics-server (hack/keda.sh): its
# kubernetesGateway provider reads the apiserver with its own client certificate
# (CN=kustos:traefik, signed by the cluster CA) bound to a ClusterRole taken from upstream's
# docs (kubernetes-gateway-rbac.yml). Its one entrypoint, web, listens on the real node's
# bridge address (BRIDGE_IP, 10.244.0.1), and the Gateway's listener names its port;
# Traefik reaches the model pods at their addresses on the bridge (EndpointSlices). Its
# ping endpoint listens on 127.0.0.1.
#
# Built from the module proxy: three parts of Traefik's module graph are not served there
# (403), so the build swaps them, each as a local module in the build directory (see the
# functions below): the auth fork (upstream go-http-auth plus two functions), the empty
# dynamic-config extension module, and lego without six ACME DNS providers. None of them
# is on the path of the Gateway API routing the tests use.
#
# Needs the real node (root, hack/cluster.sh up). State in .cluster/ (pid, log, certificate).
#
# Environment (defaults in brackets):
#   TRAEFIK_VERSION [v3.7.13]  TRAEFIK_GOTOOLCHAIN [unset: the local go, >= Traefik's go.mod]
#   KUSTOS_TRAEFIK_WEB_PORT [16271] (the web entrypoint, bridge address; the Gateway's port)
#   KUSTOS_TRAEFIK_PING_PORT [16272] (the traefik entrypoint: ping, loopback)
set -euo pipefail
there=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TRAEFIK_VERSION=${TRAEFIK_VERSION:-v3.7.13}
TRAEFIK_GOTOOLCHAIN=${TRAEFIK_GOTOOLCHAIN:-}
# shellcheck source=hack/cluster.sh
. "$there/cluster.sh"  # functions and paths only (cluster.sh returns early when sourced)

log() { printf '[traefik %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

TRAEFIK_MODULE=github.com/traefik/traefik/v3
GATEWAY_API_MODULE=sigs.k8s.io/gateway-api
GOAUTH_MODULE=github.com/abbot/go-http-auth
GOAUTH_VERSION=v0.4.0
LEGO_MODULE=github.com/go-acme/lego/v5
WEB_PORT=${KUSTOS_TRAEFIK_WEB_PORT:-16271}
PING_PORT=${KUSTOS_TRAEFIK_PING_PORT:-16272}
TRAEFIK=traefik
TRAEFIK_NS=traefik
GATEWAY=kustos
GATEWAY_CLASS=kustos-traefik
TSTATE=$CLUSTER_DIR/traefik
LABELS='{app.kubernetes.io/name: traefik, app.kubernetes.io/part-of: kustos-local-cluster}'

# ---------------------------------------------------------------- build

built_version() { go_built_version "$1" "$TRAEFIK_MODULE"; }
module_dir() { go_module_dir "$1"; }

# Traefik replaces github.com/abbot/go-http-auth with a fork, github.com/containous/go-http-auth,
# which the module proxy refuses (403 for every version). Its basic and digest auth
# middlewares use two functions the fork adds; the build takes upstream abbot v0.4.0 from
# the proxy and adds those two here (CheckSecret: a password against an htpasswd hash;
# RequireAuthStale: the digest challenge with stale=true, RFC 7616 3.3), as a local module.
goauth_module() {
  local dir=$1 src out=$1/go-http-auth
  src=$(module_dir "$GOAUTH_MODULE@$GOAUTH_VERSION")
  [ -f "$src/basic.go" ] || die "go mod download $GOAUTH_MODULE@$GOAUTH_VERSION found no module"
  rm -rf "$out" && mkdir -p "$out"
  cp "$src"/LICENSE "$src"/*.go "$out/" && chmod -R u+w "$out" && rm -f "$out"/*_test.go
  printf 'module %s\n\ngo 1.20\n\nrequire (\n\tgolang.org/x/crypto %s\n\tgolang.org/x/net %s\n)\n' \
    "$GOAUTH_MODULE" "$(mod_version "$2" golang.org/x/crypto)" "$(mod_version "$2" golang.org/x/net)" >"$out/go.mod"
  cat >"$out/kustos_fork.go" <<'GO'
package auth

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// CheckSecret reports whether password matches secret, an htpasswd hash (MD5-crypt by
// default, {SHA} or bcrypt by prefix).
func CheckSecret(password, secret string) bool {
	compare := compareFuncs[0].compare
	for _, c := range compareFuncs[1:] {
		if strings.HasPrefix(secret, c.prefix) {
			compare = c.compare
			break
		}
	}
	return compare([]byte(secret), []byte(password)) == nil
}

// RequireAuthStale answers with a fresh digest challenge marked stale (the client's nonce
// expired; it retries with the new one without asking the user again).
func (a *DigestAuth) RequireAuthStale(w http.ResponseWriter, r *http.Request) {
	a.mutex.Lock()
	if len(a.clients) > a.ClientCacheSize+a.ClientCacheTolerance {
		a.Purge(a.ClientCacheTolerance * 2)
	}
	nonce := RandomKey()
	a.clients[nonce] = &digest_client{nc: 0, last_seen: time.Now().UnixNano()}
	a.mutex.Unlock()
	w.Header().Set(contentType, a.Headers.V().UnauthContentType)
	w.Header().Set(a.Headers.V().Authenticate,
		fmt.Sprintf(`Digest realm="%s", nonce="%s", opaque="%s", algorithm="MD5", qop="auth", stale=true`,
			a.Realm, nonce, a.Opaque))
	w.WriteHeader(a.Headers.V().UnauthCode)
	_, _ = w.Write([]byte(a.Headers.V().UnauthResponse))
}
GO
  echo "replace $GOAUTH_MODULE => ./go-http-auth"
}

# Traefik's dynamic configuration embeds two extension structs from a module of its own
# repository (pkg/config/dynamic/ext, replaced by a ./ path), which the module's zip leaves
# out (a nested module) and the proxy refuses: empty structs upstream, written here.
ext_module() {
  local out=$1/dynamic-ext
  mkdir -p "$out"
  printf 'module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24\n' >"$out/go.mod"
  printf 'package ext\n\n// HTTP extends dynamic.HTTP (nothing here).\ntype HTTP struct{}\n\n// Router extends dynamic.Router (nothing here).\ntype Router struct{}\n' >"$out/ext.go"
  echo "replace github.com/traefik/traefik/dynamic/ext => ./dynamic-ext"
}

# The ACME DNS providers of lego (Traefik's ACME client) whose SDKs the module proxy
# refuses (403): the build uses lego from the proxy without them, as a local module (a
# certificates resolver naming one of them fails with lego's "unrecognized DNS provider").
LEGO_DROP="edgedns huaweicloud oraclecloud sakuracloud ucloud yandexcloud"
lego_module() {
  local dir=$1 version src out=$1/lego p
  version=$(mod_version "$2" "$LEGO_MODULE")
  [ -n "$version" ] || die "Traefik's go.mod requires no $LEGO_MODULE"
  src=$(module_dir "$LEGO_MODULE@$version")
  [ -f "$src/go.mod" ] || die "go mod download $LEGO_MODULE@$version found no module"
  rm -rf "$out" && cp -r "$src" "$out" && chmod -R u+w "$out"
  local gen=$out/providers/dns/zz_gen_dns_providers.go
  for p in $LEGO_DROP; do
    rm -rf "${out:?}/providers/dns/$p"
    # the import, and the case that calls it (its line and the return below it)
    sed -i -e "\|\"$LEGO_MODULE/providers/dns/$p\"\$|d" \
      -e "/^\tcase \"$p\"[,:]/{N;d}" "$gen"
    ! grep -q "\b$p\." "$gen" || die "could not drop lego's DNS provider $p from $gen"
  done
  echo "replace $LEGO_MODULE => ./lego"
}

# mod_version GOMOD MODULE: the version GOMOD requires of MODULE
mod_version() { awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit}' "$1"; }

# a throwaway module requiring Traefik at upstream's graph: its go.sum, its replaces (the
# one ./ path, the dynamic config extension, points into the module cache's copy) and its
# excludes; `go build -mod=mod` adds only what cmd/traefik imports
cmd_build() {
  if [ "$(built_version "$KUSTOS_BIN/traefik")" = "$TRAEFIK_VERSION" ]; then
    log "traefik $TRAEFIK_VERSION cached"
    return
  fi
  log "building traefik $TRAEFIK_VERSION (long: ~400 modules)"
  export GOFLAGS=-mod=mod CGO_ENABLED=0
  [ -n "$TRAEFIK_GOTOOLCHAIN" ] && export GOTOOLCHAIN=$TRAEFIK_GOTOOLCHAIN
  local dir=$KUSTOS_CACHE/build/traefik-$TRAEFIK_VERSION src t0=$SECONDS
  mkdir -p "$dir" "$KUSTOS_BIN"
  src=$(module_dir "$TRAEFIK_MODULE@$TRAEFIK_VERSION")
  [ -f "$src/go.mod" ] || die "go mod download $TRAEFIK_MODULE@$TRAEFIK_VERSION found no module"
  {
    echo "module kustos.dev/hack/traefik"
    echo
    sed -n 's/^go \(.*\)$/go \1/p' "$src/go.mod" | head -1
    echo
    echo "require $TRAEFIK_MODULE $TRAEFIK_VERSION"
    echo
    awk '
      /^(replace|exclude) \(/{blk=$1; next} blk&&/^\)/{blk=""; next}
      { line=$0; kw="" }
      blk { kw=blk }
      /^(replace|exclude) [^(]/ { kw=$1; sub(/^(replace|exclude) /, "", line) }
      kw=="" || line ~ /^[ \t]*(\/\/|$)/ { next }
      line ~ /go-http-auth/ { next }
      kw=="replace" && line ~ /=> \.\// { next }
      { print kw " " line }' "$src/go.mod"
  } >"$dir/go.mod"
  goauth_module "$dir" "$src/go.mod" >>"$dir/go.mod"
  lego_module "$dir" "$src/go.mod" >>"$dir/go.mod"
  ext_module "$dir" >>"$dir/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/traefik"\n' "$TRAEFIK_MODULE" >"$dir/tools.go"
  cp "$src/go.sum" "$dir/go.sum" && chmod u+w "$dir/go.sum"
  local ld="-s -w -X $TRAEFIK_MODULE/pkg/version.Version=${TRAEFIK_VERSION#v} -X $TRAEFIK_MODULE/pkg/version.Codename=kustos"
  rm -rf "$dir/out" && mkdir -p "$dir/out"
  (cd "$dir" && nice -n 10 go build -trimpath -ldflags "$ld" -o "$dir/out/traefik" "$TRAEFIK_MODULE/cmd/traefik")
  mv "$dir/out/traefik" "$KUSTOS_BIN/traefik"
  log "built $KUSTOS_BIN/traefik in $((SECONDS - t0)) s"
}


# ---------------------------------------------------------------- start

health_ping() { [ "$(curl -fsS --max-time 3 "http://127.0.0.1:$PING_PORT/ping")" = OK ]; }
gateway_programmed() {
  [ "$(kc -n "$TRAEFIK_NS" get gateway "$GATEWAY" -o 'jsonpath={.status.conditions[?(@.type=="Programmed")].status}' 2>/dev/null)" = True ]
}

# the Gateway API version Traefik's go.mod requires: its CRDs are the ones it was built for
gateway_api_version() {
  local src
  src=$(module_dir "$TRAEFIK_MODULE@$TRAEFIK_VERSION")
  mod_version "$src/go.mod" "$GATEWAY_API_MODULE"
}

# the standard channel's CRDs (config/crd/kustomization.yaml of the module), server-side
apply_crds() {
  local version src crd deadline=$((SECONDS + 60))
  version=$(gateway_api_version)
  [ -n "$version" ] || die "Traefik's go.mod requires no $GATEWAY_API_MODULE"
  src=$(module_dir "$GATEWAY_API_MODULE@$version")
  [ -f "$src/config/crd/kustomization.yaml" ] || die "no config/crd in $GATEWAY_API_MODULE@$version"
  log "Gateway API $version CRDs (standard channel)"
  kc kustomize "$src/config/crd" |
    kc apply --server-side --field-manager=kustos-traefik --force-conflicts -f - >/dev/null
  for crd in gatewayclasses gateways httproutes grpcroutes referencegrants; do
    until [ "$(kc get crd "$crd.gateway.networking.k8s.io" -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]; do
      ((SECONDS < deadline)) || die "CRD $crd.gateway.networking.k8s.io not Established after 60 s"
      sleep 0.5
    done
  done
}

# upstream's ClusterRole for the Gateway provider (the first document of its RBAC
# example), renamed, bound to this process's user
apply_rbac() {
  local src=$1
  awk '/^---/{exit} {print}' "$src/docs/content/reference/dynamic-configuration/kubernetes-gateway-rbac.yml" |
    sed 's/^  name: gateway-role$/  name: "kustos:traefik"/' |
    kc apply --server-side --field-manager=kustos-traefik --force-conflicts -f - >/dev/null
  kc apply --server-side --field-manager=kustos-traefik -f - >/dev/null <<EOF2
apiVersion: v1
kind: Namespace
metadata:
  name: $TRAEFIK_NS
  labels: $LABELS
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: "kustos:traefik"
  labels: $LABELS
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "kustos:traefik"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:traefik"}
EOF2
}

# the GatewayClass Traefik's controller claims, and one Gateway whose HTTP listener is the
# web entrypoint's port (Traefik maps a listener to the entrypoint of the same port);
# routes from every namespace may attach
apply_gateway() {
  kc apply --server-side --field-manager=kustos-traefik -f - >/dev/null <<EOF2
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: $GATEWAY_CLASS
  labels: $LABELS
spec:
  controllerName: traefik.io/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: $GATEWAY
  namespace: $TRAEFIK_NS
  labels: $LABELS
spec:
  gatewayClassName: $GATEWAY_CLASS
  listeners:
  - name: web
    protocol: HTTP
    port: $WEB_PORT
    allowedRoutes:
      namespaces: {from: All}
EOF2
}

ensure_pki_traefik() {
  cert traefik "/CN=kustos:traefik" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  mkdir -p "$KCONF" "$TSTATE"
  kubeconfig "$KCONF/traefik.conf" traefik
}

start_traefik() {
  port_busy "$WEB_PORT" && die "port $WEB_PORT is in use by another process; set KUSTOS_TRAEFIK_WEB_PORT"
  port_busy "$PING_PORT" && die "port $PING_PORT is in use by another process; set KUSTOS_TRAEFIK_PING_PORT"
  log "starting traefik (web on http://$BRIDGE_IP:$WEB_PORT)"
  # the provider builds its client from $KUBECONFIG when it is set (our client certificate)
  export KUBECONFIG=$KCONF/traefik.conf
  start "$TRAEFIK" \
    --global.checknewversion=false --global.sendanonymoususage=false \
    --entrypoints.web.address="$BRIDGE_IP:$WEB_PORT" \
    --entrypoints.web.http.aliasheadersstrategy=delete \
    --entrypoints.traefik.address="127.0.0.1:$PING_PORT" \
    --ping=true --ping.entrypoint=traefik \
    --providers.kubernetesgateway=true \
    --providers.kubernetesgateway.statusaddress.ip="$BRIDGE_IP" \
    --providers.kubernetesgateway.throttleduration=0s \
    --log.level="${KUSTOS_TRAEFIK_LOG_LEVEL:-INFO}" --log.nocolor=true --accesslog=false
}

cmd_start() {
  script_lock traefik
  load_ports
  KUBECTL_BIN=$(find_kubectl)
  [ "$REAL_NODE_ENABLED" = 1 ] && [[ $(ip -4 -o addr show 2>/dev/null) == *" $BRIDGE_IP/"* ]] ||
    die "the real node is not up (no $BRIDGE_IP on this host): run hack/cluster.sh up as root first"
  if pid_of "$TRAEFIK" >/dev/null && health_ping && gateway_programmed; then
    log "already running (http://$BRIDGE_IP:$WEB_PORT)"
    return 0
  fi
  [ -x "$KUSTOS_BIN/$TRAEFIK" ] || cmd_build
  local t0=$SECONDS src
  src=$(module_dir "$TRAEFIK_MODULE@$TRAEFIK_VERSION")
  ensure_pki_traefik
  apply_crds
  apply_rbac "$src"
  wait_can_i "Traefik's user" \
    "list httproutes.gateway.networking.k8s.io --as kustos:traefik" \
    "list endpointslices.discovery.k8s.io --as kustos:traefik"
  trap 'rc=$?; [ $rc = 0 ] || { log "start failed: stopping"; stop_process; }' EXIT
  pid_of "$TRAEFIK" >/dev/null || (start_traefik)
  wait_healthy "$TRAEFIK" 60 health_ping
  apply_gateway
  log "waiting for the Gateway $TRAEFIK_NS/$GATEWAY to be Programmed"
  wait_healthy "$TRAEFIK" 60 gateway_programmed
  trap - EXIT
  log "Traefik serving in $((SECONDS - t0))s: Gateway $TRAEFIK_NS/$GATEWAY on http://$BRIDGE_IP:$WEB_PORT"
}

# ---------------------------------------------------------------- stop / status

stop_process() {
  local pid
  if pid=$(pid_of "$TRAEFIK"); then terminate "$TRAEFIK" 15 "$pid"; fi
  rm -f "$RUN/$TRAEFIK.pid"
}

cmd_stop() {
  script_lock traefik
  load_ports
  stop_process
  log "stopped (Gateway API CRDs, GatewayClass and Gateway kept)"
}

cmd_status() {
  load_ports
  KUBECTL_BIN=$(find_kubectl)
  local pid
  if ! pid=$(pid_of "$TRAEFIK"); then printf '%-24s stopped\n' "$TRAEFIK"; return 1; fi
  if health_ping && gateway_programmed; then
    printf '%-24s running  pid %-8s healthy (Gateway %s/%s Programmed)\n' "$TRAEFIK" "$pid" "$TRAEFIK_NS" "$GATEWAY"
  else
    printf '%-24s running  pid %-8s UNHEALTHY\n' "$TRAEFIK" "$pid"; return 1
  fi
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

component_main "$0" "$@"
