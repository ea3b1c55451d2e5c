#!/usr/bin/env bash
# metrics-server for the local cluster: the resource metrics API (metrics.k8s.io) that the
# HPA controller and `kubectl top` read, fed by the real node's kubelet.
#
#   hack/metrics-server.sh build    build sigs.k8s.io/metrics-server into $KUSTOS_BIN (idempotent)
#   hack/metrics-server.sh start    build if missing, start it, register it, wait until
#                                   `kubectl top node` has figures (no-op when it serves)
#   hack/metrics-server.sh stop     stop it and remove its APIService, Service and EndpointSlice
#   hack/metrics-server.sh status   exit 0 only if it runs and the APIService is Available
#
# It runs as a host process, like the node's kubelet, kube-proxy and CoreDNS (hack/node.sh):
# there is no registry and no image to build, it reads the cluster's certificates directly,
# and it stops with the cluster. It listens on the real node's bridge address (BRIDGE_IP,
# 10.244.0.1), the address the kubelet and the apiserver relay already use: the apiserver
# reaches an aggregated API through a Service, and an EndpointSlice cannot point at 127/8.
# A selector-less Service kube-system/metrics-server with a hand-written EndpointSlice
# (BRIDGE_IP:port) and the APIService v1beta1.metrics.k8s.io tie it in; the APIService's
# caBundle is the cluster CA, which signed metrics-server's serving certificate.
#
# TLS both ways, nothing insecure: metrics-server verifies the kubelet's serving certificate
# against the cluster CA (hack/node.sh signs it for 10.244.0.1), and authenticates to the
# apiserver and to the kubelet with its own client certificate (CN=kustos:metrics-server,
# bound to a ClusterRole that reads nodes/metrics, pods and nodes). It scrapes only the real
# node (--node-selector type=real): the kwok node has no kubelet.
#
# Needs the real node (root, hack/cluster.sh up). State in .cluster/ (pid, log, certificate).
#
# Environment (defaults in brackets):
#   METRICS_SERVER_VERSION [v0.9.0]  (v0.9.1 needs Go >= 1.26.10)
#   KUSTOS_METRICS_SERVER_PORT [16251]  KUSTOS_METRICS_RESOLUTION [15s] (scrape interval, >= 10s)
set -euo pipefail
mhere=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION:-v0.9.0}
# shellcheck source=hack/cluster.sh
. "$mhere/cluster.sh"  # functions and paths only (cluster.sh returns early when sourced)

log() { printf '[metrics-server %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

NAME=metrics-server
MS_PORT=${KUSTOS_METRICS_SERVER_PORT:-16251}
MS_RESOLUTION=${KUSTOS_METRICS_RESOLUTION:-15s}
MS_CONF=$CLUSTER_DIR/kubeconfigs/metrics-server.conf

# ---------------------------------------------------------------- build

# a throwaway module requiring metrics-server, so `go build` resolves its own graph (the
# wrapper/tools pattern of hack/build-tools.sh)
cmd_build() {
  local want=$METRICS_SERVER_VERSION out
  if [ -x "$KUSTOS_BIN/$NAME" ] && out=$("$KUSTOS_BIN/$NAME" --version 2>&1) && [ "$out" = "$want" ]; then
    log "metrics-server $want cached"
    return
  fi
  log "building metrics-server $want (about 3 min on 2 cores with the modules downloaded)"
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
  local dir=$KUSTOS_CACHE/build/metrics-server-$want
  mkdir -p "$dir" "$KUSTOS_BIN"
  cat >"$dir/go.mod" <<EOF
module kustos.dev/hack/metrics-server-$want

go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')

require sigs.k8s.io/metrics-server $want
EOF
  printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/metrics-server/cmd/metrics-server"\n' >"$dir/tools.go"
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  local p=k8s.io/client-go/pkg/version
  (cd "$dir" && go build -trimpath \
    -ldflags "-s -w -X $p.gitVersion=$want -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z" \
    -o "$KUSTOS_BIN/$NAME.tmp" sigs.k8s.io/metrics-server/cmd/metrics-server)
  mv "$KUSTOS_BIN/$NAME.tmp" "$KUSTOS_BIN/$NAME"
  log "built $KUSTOS_BIN/$NAME"
}

# ---------------------------------------------------------------- start

ms_pid() { pid_of "$NAME"; }

health_ms() { [ "$(curl -fsS --max-time 3 --cacert "$PKI/ca.crt" "https://$BRIDGE_IP:$MS_PORT/livez")" = ok ]; }
api_available() { apiservice_available v1beta1.metrics.k8s.io; }
# the real node's own figures (`kubectl top node`): the kubelet has been scraped through the
# aggregated API (pods may not run yet, so not `top pods`)
has_figures() {
  [[ $(kc get --raw "/apis/metrics.k8s.io/v1beta1/nodes/${KUSTOS_REAL_NODE_NAME:-kustos-node-0}" 2>/dev/null) == *'"usage"'* ]]
}

ensure_pki_ms() {
  cert metrics-server "/CN=kustos:metrics-server" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.cluster.local,IP:$BRIDGE_IP"
  mkdir -p "$KCONF"
  kubeconfig "$MS_CONF" metrics-server
}

apply_registration() {
  kc apply --server-side --field-manager=kustos-metrics-server -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kustos:metrics-server
  labels: {app.kubernetes.io/name: metrics-server, app.kubernetes.io/part-of: kustos-local-cluster}
rules:
- apiGroups: [""]
  resources: [nodes/metrics]
  verbs: [get]
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kustos:metrics-server
  labels: {app.kubernetes.io/name: metrics-server, app.kubernetes.io/part-of: kustos-local-cluster}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "kustos:metrics-server"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:metrics-server"}
---
# delegated authentication and authorization of the callers (the apiserver's front proxy)
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kustos:metrics-server:auth-delegator
  labels: {app.kubernetes.io/name: metrics-server, app.kubernetes.io/part-of: kustos-local-cluster}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:metrics-server"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: kustos:metrics-server:auth-reader
  namespace: kube-system
  labels: {app.kubernetes.io/name: metrics-server, app.kubernetes.io/part-of: kustos-local-cluster}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:metrics-server"}
---
# no selector: the endpoint is the host process, written below
apiVersion: v1
kind: Service
metadata:
  name: metrics-server
  namespace: kube-system
  labels: {app.kubernetes.io/name: metrics-server, app.kubernetes.io/part-of: kustos-local-cluster}
spec:
  ports:
  - {name: https, port: 443, protocol: TCP, targetPort: $MS_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: metrics-server-host
  namespace: kube-system
  labels:
    kubernetes.io/service-name: metrics-server
    endpointslice.kubernetes.io/managed-by: kustos-metrics-server-sh
    app.kubernetes.io/name: metrics-server
    app.kubernetes.io/part-of: kustos-local-cluster
addressType: IPv4
ports:
- {name: https, port: $MS_PORT, protocol: TCP}
endpoints:
- addresses: ["$BRIDGE_IP"]
  conditions: {ready: true}
EOF
}

# the APIService last, once the server answers: while it is registered without a server,
# discovery of metrics.k8s.io fails for every client (and the namespace controller)
register_apiservice() {
  kc apply --server-side --field-manager=kustos-metrics-server -f - >/dev/null <<EOF
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
  labels: {app.kubernetes.io/name: metrics-server, app.kubernetes.io/part-of: kustos-local-cluster}
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: metrics-server, namespace: kube-system, port: 443}
  caBundle: $(base64 -w0 <"$PKI/ca.crt")
EOF
}

cmd_start() {
  script_lock metrics-server
  load_ports
  KUBECTL_BIN=$(find_kubectl)
  [ "$REAL_NODE_ENABLED" = 1 ] && [[ $(ip -4 -o addr show 2>/dev/null) == *" $BRIDGE_IP/"* ]] ||
    die "the real node is not up (no $BRIDGE_IP on this host): run hack/cluster.sh up as root first"
  if ms_pid >/dev/null && health_ms && api_available && has_figures; then
    log "already running (https://$BRIDGE_IP:$MS_PORT)"
    return 0
  fi
  [ -x "$KUSTOS_BIN/$NAME" ] || cmd_build
  local t0=$SECONDS
  ensure_pki_ms
  # a start that fails from here on leaves nothing registered nor running
  trap 'rc=$?; [ $rc = 0 ] || { log "start failed: unregistering and stopping"; deregister; stop_process; }' EXIT
  apply_registration
  # its RBAC first: metrics-server reads extension-apiserver-authentication at start-up and
  # exits if it may not (on a fresh cluster the bindings above are seconds old)
  wait_can_i kustos:metrics-server \
    "get configmaps/extension-apiserver-authentication -n kube-system --as kustos:metrics-server" \
    "get nodes/metrics --as kustos:metrics-server"
  if ! ms_pid >/dev/null; then
    port_busy "$MS_PORT" && die "port $MS_PORT is in use by another process; set KUSTOS_METRICS_SERVER_PORT"
    log "starting metrics-server on https://$BRIDGE_IP:$MS_PORT (scrapes every $MS_RESOLUTION)"
    start "$NAME" \
      --kubeconfig "$MS_CONF" --authentication-kubeconfig "$MS_CONF" --authorization-kubeconfig "$MS_CONF" \
      --bind-address "$BRIDGE_IP" --secure-port "$MS_PORT" \
      --tls-cert-file "$PKI/metrics-server.crt" --tls-private-key-file "$PKI/metrics-server.key" \
      --kubelet-certificate-authority "$PKI/ca.crt" \
      --kubelet-client-certificate "$PKI/metrics-server.crt" --kubelet-client-key "$PKI/metrics-server.key" \
      --kubelet-preferred-address-types InternalIP --kubelet-use-node-status-port \
      --node-selector type=real \
      --metric-resolution "$MS_RESOLUTION" \
      --profiling=false \
      --v "${KUSTOS_LOG_V:-1}"
  fi
  wait_healthy "$NAME" 60 health_ms
  register_apiservice
  log "waiting for the APIService v1beta1.metrics.k8s.io to be Available"
  wait_healthy "$NAME" 120 api_available
  log "waiting for the first scrape of the kubelet"
  wait_healthy "$NAME" 120 has_figures
  trap - EXIT
  log "metrics-server serving in $((SECONDS - t0))s (kubectl top pods -A)"
}

# ---------------------------------------------------------------- stop / status

cmd_stop() {
  script_lock metrics-server
  load_ports
  KUBECTL_BIN=$(find_kubectl)
  deregister
  stop_process
  log "stopped"
}

# the registration first: an APIService without a backend makes discovery fail for every client
deregister() {
  health_apiserver 2>/dev/null || return 0
  kc delete apiservice v1beta1.metrics.k8s.io --ignore-not-found >/dev/null || true
  kc -n kube-system delete endpointslice metrics-server-host --ignore-not-found >/dev/null || true
  kc -n kube-system delete service metrics-server --ignore-not-found >/dev/null || true
}

stop_process() {
  local pid
  if pid=$(ms_pid); then terminate metrics-server 10 "$pid"; fi
  rm -f "$RUN/$NAME.pid"
}

cmd_status() {
  load_ports
  KUBECTL_BIN=$(find_kubectl)
  local pid
  if ! pid=$(ms_pid); then echo "metrics-server           stopped"; return 1; fi
  if health_ms && api_available; then
    printf '%-24s running  pid %-8s healthy (APIService Available)\n' metrics-server "$pid"
  else
    printf '%-24s running  pid %-8s UNHEALTHY\n' metrics-server "$pid"; return 1
  fi
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

component_main "$0" "$@"
