#!/usr/bin/env bash
# KEDA for the local cluster: ScaledObjects scale Deployments on external metrics (here the
# Prometheus scaler over kustos serve's request counter).
#
#   hack/keda.sh build    build KEDA's operator and metrics adapter into $KUSTOS_BIN (idempotent)
#   hack/keda.sh start    build if missing; KEDA's CRDs, RBAC and certificates; start the
#                         operator and the adapter; register the APIService
#                         v1beta1.external.metrics.k8s.io (no-op when they serve)
#   hack/keda.sh stop     remove the APIService first, then stop both processes
#   hack/keda.sh status   exit 0 only if both run and the APIService is Available
#
# Both run as host processes, like metrics-server (hack/metrics-server.sh, whose pattern this
# follows): the adapter listens on the real node's bridge address (BRIDGE_IP, 10.244.0.1)
# behind a selector-less Service keda/keda-metrics-apiserver and a hand-written EndpointSlice,
# so the apiserver's aggregator reaches it; the operator, which runs the scalers (it queries
# Prometheus) and serves them to the adapter over gRPC (mutual TLS), listens on 127.0.0.1.
# Every certificate is signed by the cluster CA (KEDA's own certificate rotation is off):
# the adapter's serving certificate (the APIService's caBundle is the cluster CA) and the
# gRPC pair. Each process authenticates to the apiserver with its own client certificate
# (CN=kustos:keda-operator, CN=kustos:keda-adapter), bound to ClusterRoles written here
# after upstream's config/rbac. KEDA's admission webhooks are not run.
#
# Needs the real node (root, hack/cluster.sh up). State in .cluster/ (pids, logs, certificates).
#
# Environment (defaults in brackets):
#   KEDA_VERSION [v2.21.1]  KEDA_GOTOOLCHAIN [go1.27.4] (KEDA's go.mod says go 1.27.4: the
#   build fetches that toolchain through the module proxy unless the local go is new enough)
#   KUSTOS_KEDA_ADAPTER_PORT [16261] (external metrics API, bridge address)
#   KUSTOS_KEDA_GRPC_PORT [16262] (operator -> adapter, loopback)
#   KUSTOS_KEDA_METRICS_PORT [16263], KUSTOS_KEDA_PROBE_PORT [16264] (operator, loopback)
#   KUSTOS_KEDA_ADAPTER_METRICS_PORT [16265] (the adapter's /metrics: upstream binds it on
#   every address, no flag narrows it)
set -euo pipefail
khere=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KEDA_VERSION=${KEDA_VERSION:-v2.21.1}
KEDA_GOTOOLCHAIN=${KEDA_GOTOOLCHAIN:-go1.27.4}
# shellcheck source=hack/cluster.sh
. "$khere/cluster.sh"  # functions and paths only (cluster.sh returns early when sourced)

log() { printf '[keda %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

KEDA_MODULE=github.com/kedacore/keda/v2
ADAPTER_PORT=${KUSTOS_KEDA_ADAPTER_PORT:-16261}
GRPC_PORT=${KUSTOS_KEDA_GRPC_PORT:-16262}
OP_METRICS_PORT=${KUSTOS_KEDA_METRICS_PORT:-16263}
OP_PROBE_PORT=${KUSTOS_KEDA_PROBE_PORT:-16264}
ADAPTER_METRICS_PORT=${KUSTOS_KEDA_ADAPTER_METRICS_PORT:-16265}
KEDA_NS=keda
OPERATOR=keda-operator
ADAPTER=keda-adapter
APISERVICE=v1beta1.external.metrics.k8s.io
KSTATE=$CLUSTER_DIR/keda
LABELS='{app.kubernetes.io/name: keda, app.kubernetes.io/part-of: kustos-local-cluster}'

# ---------------------------------------------------------------- build

built_version() { go_built_version "$1" "$KEDA_MODULE"; }
keda_module_dir() { GOTOOLCHAIN=$KEDA_GOTOOLCHAIN go_module_dir "$KEDA_MODULE@$KEDA_VERSION"; }

# a throwaway module requiring KEDA (its replaces by version, its go.sum), so `go build`
# resolves upstream's own graph (the wrapper pattern of hack/build-tools.sh)
cmd_build() {
  if [ "$(built_version "$KUSTOS_BIN/keda-operator")" = "$KEDA_VERSION" ] &&
     [ "$(built_version "$KUSTOS_BIN/keda-adapter")" = "$KEDA_VERSION" ]; then
    log "keda $KEDA_VERSION cached"
    return
  fi
  log "building keda $KEDA_VERSION (operator, adapter) with $KEDA_GOTOOLCHAIN (long: ~370 modules)"
  export GOTOOLCHAIN=$KEDA_GOTOOLCHAIN GOFLAGS=-mod=mod CGO_ENABLED=0
  local dir=$KUSTOS_CACHE/build/keda-$KEDA_VERSION src t0=$SECONDS
  mkdir -p "$dir" "$KUSTOS_BIN"
  src=$(keda_module_dir)
  [ -f "$src/go.mod" ] || die "go mod download $KEDA_MODULE@$KEDA_VERSION found no module"
  {
    echo "module kustos.dev/hack/keda"
    echo
    sed -n 's/^go \(.*\)$/go \1/p' "$src/go.mod" | head -1
    echo
    echo "require $KEDA_MODULE $KEDA_VERSION"
    echo
    # upstream's replaces by version (not its ./ paths), one-line or in a block
    awk '/^replace \(/{on=1; next} on&&/^\)/{on=0; next}
         on&&/=>/&&!/=> \.\.?\//{print "replace " $0}
         /^replace [^(]/&&!/=> \.\.?\//{print}' "$src/go.mod"
  } >"$dir/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s/cmd/adapter"\n\t_ "%s/cmd/operator"\n)\n' \
    "$KEDA_MODULE" "$KEDA_MODULE" >"$dir/tools.go"
  cp "$src/go.sum" "$dir/go.sum" && chmod u+w "$dir/go.sum"
  # no `go mod tidy`: it follows every build tag, and a tools file of ginkgo (imported by
  # KEDA's pkg/util) pulls a google/pprof version the proxy refuses (403); `go build
  # -mod=mod` adds only what the two commands import, at upstream's versions (its go.sum)
  local ld="-s -w -X $KEDA_MODULE/version.Version=${KEDA_VERSION#v} -X $KEDA_MODULE/version.GitCommit=$KEDA_VERSION"
  rm -rf "$dir/out" && mkdir -p "$dir/out"
  (cd "$dir" && nice -n 10 go build -trimpath -ldflags "$ld" -o "$dir/out/" \
     "$KEDA_MODULE/cmd/operator" "$KEDA_MODULE/cmd/adapter")
  mv "$dir/out/operator" "$KUSTOS_BIN/keda-operator"
  mv "$dir/out/adapter" "$KUSTOS_BIN/keda-adapter"
  log "built $KUSTOS_BIN/keda-operator and keda-adapter in $((SECONDS - t0)) s"
}


# ---------------------------------------------------------------- start

pid_of_keda() { pid_of "$1"; }

health_operator() { [ "$(curl -fsS --max-time 3 "http://127.0.0.1:$OP_PROBE_PORT/healthz")" = ok ]; }
health_adapter() { [ "$(curl -fsS --max-time 3 --cacert "$PKI/ca.crt" "https://$BRIDGE_IP:$ADAPTER_PORT/livez")" = ok ]; }
api_available() { apiservice_available "$APISERVICE"; }
# discovery of external.metrics.k8s.io through the aggregator answers (the adapter is reached)
api_discovers() { kc get --raw "/apis/external.metrics.k8s.io/v1beta1" >/dev/null 2>&1; }

# certdir NAME CERT: a directory as KEDA reads it (ca.crt, tls.crt, tls.key)
certdir() {
  local dir=$KSTATE/$1-certs
  mkdir -p "$dir" && chmod 700 "$dir"
  cp -f "$PKI/ca.crt" "$dir/ca.crt"
  cp -f "$PKI/$2.crt" "$dir/tls.crt"
  cp -f "$PKI/$2.key" "$dir/tls.key"
  chmod 600 "$dir/tls.key"
}

ensure_pki_keda() {
  # the operator: an apiserver client, and the gRPC server the adapter calls (mutual TLS)
  cert keda-operator "/CN=kustos:keda-operator" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:keda-operator.$KEDA_NS.svc,DNS:keda-operator.$KEDA_NS.svc.cluster.local,IP:127.0.0.1"
  # the adapter: an apiserver client, the external metrics API's server, the gRPC client
  cert keda-adapter "/CN=kustos:keda-adapter" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:keda-metrics-apiserver.$KEDA_NS.svc,DNS:keda-metrics-apiserver.$KEDA_NS.svc.cluster.local,IP:$BRIDGE_IP"
  mkdir -p "$KCONF" "$KSTATE"
  kubeconfig "$KCONF/keda-operator.conf" keda-operator
  kubeconfig "$KCONF/keda-adapter.conf" keda-adapter
  certdir operator keda-operator
  certdir adapter keda-adapter
  # what the scalers trust beyond the system's roots (every file must be a certificate)
  mkdir -p "$KSTATE/ca" && cp -f "$PKI/ca.crt" "$KSTATE/ca/cluster-ca.crt"
}

# KEDA's CRDs as upstream's kustomization builds them (config/crd: bases plus two schema
# patches), its operator ClusterRole (config/rbac/role.yaml) and the external metrics
# reader role (config/metrics-server/role.yaml), read from the module
apply_upstream() {
  local src=$1
  kc kustomize "$src/config/crd" |
    kc apply --server-side --field-manager=kustos-keda --force-conflicts -f - >/dev/null
  # polled: on a fresh cluster `kubectl wait` meets CRDs without status yet and errors out
  local crd deadline=$((SECONDS + 60))
  for crd in scaledobjects scaledjobs triggerauthentications clustertriggerauthentications; do
    until [ "$(kc get crd "$crd.keda.sh" -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]; do
      ((SECONDS < deadline)) || die "CRD $crd.keda.sh not Established after 60 s"
      sleep 0.5
    done
  done
  kc apply --server-side --field-manager=kustos-keda --force-conflicts \
    -f "$src/config/rbac/role.yaml" -f "$src/config/metrics-server/role.yaml" >/dev/null
}

ensure_namespace() {
  kc apply --server-side --field-manager=kustos-keda -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $KEDA_NS
  labels: $LABELS
EOF
}

apply_registration() {
  kc apply --server-side --field-manager=kustos-keda -f - >/dev/null <<EOF
# upstream runs both processes as the ServiceAccount keda-operator; here each has its user
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kustos:keda-operator
  labels: $LABELS
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: keda-operator}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:keda-operator"}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:keda-adapter"}
---
# delegated authentication and authorization of the callers (the apiserver's front proxy)
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kustos:keda-adapter:auth-delegator
  labels: $LABELS
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:keda-adapter"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: kustos:keda-adapter:auth-reader
  namespace: kube-system
  labels: $LABELS
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:keda-adapter"}
---
# the HPA controller (kube-controller-manager uses service account credentials) reads the
# external metrics
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kustos:keda-hpa-controller-external-metrics
  labels: $LABELS
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: keda-external-metrics-reader}
subjects:
- {kind: ServiceAccount, name: horizontal-pod-autoscaler, namespace: kube-system}
---
# no selector: the endpoint is the host process, written below
apiVersion: v1
kind: Service
metadata:
  name: keda-metrics-apiserver
  namespace: $KEDA_NS
  labels: $LABELS
spec:
  ports:
  - {name: https, port: 443, protocol: TCP, targetPort: $ADAPTER_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: keda-metrics-apiserver-host
  namespace: $KEDA_NS
  labels:
    kubernetes.io/service-name: keda-metrics-apiserver
    endpointslice.kubernetes.io/managed-by: kustos-keda-sh
    app.kubernetes.io/name: keda
    app.kubernetes.io/part-of: kustos-local-cluster
addressType: IPv4
ports:
- {name: https, port: $ADAPTER_PORT, protocol: TCP}
endpoints:
- addresses: ["$BRIDGE_IP"]
  conditions: {ready: true}
EOF
}

# the APIService last, once the adapter answers: registered without a server, discovery of
# external.metrics.k8s.io fails for every client (and the namespace controller)
register_apiservice() {
  kc apply --server-side --field-manager=kustos-keda -f - >/dev/null <<EOF
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: $APISERVICE
  labels: $LABELS
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: keda-metrics-apiserver, namespace: $KEDA_NS, port: 443}
  caBundle: $(base64 -w0 <"$PKI/ca.crt")
EOF
}

# the authorizer has caught up with the bindings apply_registration made: the adapter reads
# extension-apiserver-authentication at start-up and exits if it may not, and on a fresh
# cluster the bindings are seconds old
wait_rbac() {
  wait_can_i "KEDA's users" \
    "get configmaps/extension-apiserver-authentication -n kube-system --as kustos:keda-adapter" \
    "list scaledobjects.keda.sh --as kustos:keda-operator" \
    "list scaledobjects.keda.sh --as kustos:keda-adapter"
}

# every namespace watched; KEDA's own objects in $KEDA_NS; each process its kubeconfig
keda_env() {
  export WATCH_NAMESPACE="" POD_NAMESPACE=$KEDA_NS KEDA_CLUSTER_OBJECT_NAMESPACE=$KEDA_NS \
    KEDA_HTTP_DEFAULT_TIMEOUT=3000 KUBECONFIG=$KCONF/$1.conf
}

start_operator() {
  port_busy "$GRPC_PORT" && die "port $GRPC_PORT is in use by another process; set KUSTOS_KEDA_GRPC_PORT"
  log "starting keda-operator (gRPC on 127.0.0.1:$GRPC_PORT)"
  keda_env keda-operator
  start "$OPERATOR" \
    --leader-elect=false \
    --metrics-bind-address "127.0.0.1:$OP_METRICS_PORT" \
    --health-probe-bind-address "127.0.0.1:$OP_PROBE_PORT" \
    --metrics-service-bind-address "127.0.0.1:$GRPC_PORT" \
    --cert-dir "$KSTATE/operator-certs" --enable-cert-rotation=false \
    --enable-webhook-patching=false --enable-apiservice-patching=false \
    --ca-dir "$KSTATE/ca" \
    --zap-log-level "${KUSTOS_KEDA_LOG_LEVEL:-info}" --zap-encoder console
}

start_adapter() {
  port_busy "$ADAPTER_PORT" && die "port $ADAPTER_PORT is in use by another process; set KUSTOS_KEDA_ADAPTER_PORT"
  log "starting keda-adapter on https://$BRIDGE_IP:$ADAPTER_PORT"
  local conf=$KCONF/keda-adapter.conf dir=$KSTATE/adapter-certs
  keda_env keda-adapter
  start "$ADAPTER" \
    --bind-address "$BRIDGE_IP" --secure-port "$ADAPTER_PORT" \
    --cert-dir "$dir" --tls-cert-file "$dir/tls.crt" --tls-private-key-file "$dir/tls.key" \
    --lister-kubeconfig "$conf" --authentication-kubeconfig "$conf" --authorization-kubeconfig "$conf" \
    --metrics-service-address "127.0.0.1:$GRPC_PORT" \
    --port "$ADAPTER_METRICS_PORT" \
    --zap-log-level "${KUSTOS_KEDA_LOG_LEVEL:-info}" --zap-encoder console
}

cmd_start() {
  script_lock keda
  load_ports
  KUBECTL_BIN=$(find_kubectl)
  [ "$REAL_NODE_ENABLED" = 1 ] && [[ $(ip -4 -o addr show 2>/dev/null) == *" $BRIDGE_IP/"* ]] ||
    die "the real node is not up (no $BRIDGE_IP on this host): run hack/cluster.sh up as root first"
  if pid_of_keda "$OPERATOR" >/dev/null && pid_of_keda "$ADAPTER" >/dev/null &&
     health_operator && health_adapter && api_available; then
    log "already running (https://$BRIDGE_IP:$ADAPTER_PORT)"
    return 0
  fi
  [ -x "$KUSTOS_BIN/$OPERATOR" ] && [ -x "$KUSTOS_BIN/$ADAPTER" ] || cmd_build
  local t0=$SECONDS src
  src=$(keda_module_dir)
  ensure_pki_keda
  ensure_namespace
  apply_upstream "$src"
  # a start that fails from here on leaves nothing registered nor running
  trap 'rc=$?; [ $rc = 0 ] || { log "start failed: unregistering and stopping"; deregister; stop_processes; }' EXIT
  apply_registration
  wait_rbac
  pid_of_keda "$OPERATOR" >/dev/null || (start_operator)
  wait_healthy "$OPERATOR" 120 health_operator
  pid_of_keda "$ADAPTER" >/dev/null || (start_adapter)
  wait_healthy "$ADAPTER" 120 health_adapter
  register_apiservice
  log "waiting for the APIService $APISERVICE to be Available"
  wait_healthy "$ADAPTER" 120 api_available
  wait_healthy "$ADAPTER" 60 api_discovers
  trap - EXIT
  log "KEDA serving in $((SECONDS - t0))s (kubectl get scaledobjects -A; kubectl get --raw /apis/external.metrics.k8s.io/v1beta1)"
}

# ---------------------------------------------------------------- stop / status

cmd_stop() {
  script_lock keda
  load_ports
  KUBECTL_BIN=$(find_kubectl)
  deregister
  stop_processes
  log "stopped (CRDs kept; a ScaledObject deleted from now on waits for KEDA's finalizer)"
}

# the registration first: an APIService without a backend makes discovery fail for every client
deregister() {
  health_apiserver 2>/dev/null || return 0
  kc delete apiservice "$APISERVICE" --ignore-not-found >/dev/null || true
  kc -n "$KEDA_NS" delete endpointslice keda-metrics-apiserver-host --ignore-not-found >/dev/null || true
  kc -n "$KEDA_NS" delete service keda-metrics-apiserver --ignore-not-found >/dev/null || true
}

stop_processes() {
  local pid name
  for name in "$ADAPTER" "$OPERATOR"; do
    if pid=$(pid_of_keda "$name"); then terminate "$name" 15 "$pid"; fi
    rm -f "$RUN/$name.pid"
  done
}

cmd_status() {
  load_ports
  KUBECTL_BIN=$(find_kubectl)
  local pid rc=0 name
  for name in "$OPERATOR" "$ADAPTER"; do
    if ! pid=$(pid_of_keda "$name"); then printf '%-24s stopped\n' "$name"; rc=1; continue; fi
    if { [ "$name" = "$OPERATOR" ] && health_operator; } ||
       { [ "$name" = "$ADAPTER" ] && health_adapter && api_available; }; then
      printf '%-24s running  pid %-8s healthy\n' "$name" "$pid"
    else
      printf '%-24s running  pid %-8s UNHEALTHY\n' "$name" "$pid"; rc=1
    fi
  done
  return $rc
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

component_main "$0" "$@"
