#!/usr/bin/env bash
# NetworkPolicy enforcement on the real node: kube-router's network-policy controller only
# (no routing, no service proxy; kube-proxy and the CNI bridge of hack/node.sh stay in
# charge), as a host process. Needs root and a running real node (hack/node.sh up).
#
#   hack/kube-router.sh build    build kube-router from its Go module into $KUSTOS_BIN
#                                (idempotent: kept if `kube-router --version` names the pin)
#   hack/kube-router.sh start    start the controller (client certificate and RBAC of its
#                                own), wait until it has programmed its chains; no-op if it runs
#   hack/kube-router.sh stop     stop it and delete every iptables chain and rule and every
#                                ipset it created (what `start` recorded it found is kept)
#   hack/kube-router.sh status   running and healthy, or not (exit 1)
#   hack/kube-router.sh verify-clean
#                                compare iptables and ipsets with what `start` recorded
#
# kube-router's own `--cleanup-config` is not used: in v2.1.0 its network-policy part finds
# no iptables handlers and does nothing, and the service-proxy part then dies on a nil
# pointer (cloudnativelabs/kube-router#1649, fixed after 2.1.0). `stop` removes the state
# itself: the chains kube-router names (KUBE-ROUTER-*, KUBE-NWPLCY-*, KUBE-POD-FW-*) and its
# ipsets (KUBE-SRC-*, KUBE-DST-*, kube-router-*) that did not exist at `start`.
#
# Bridged pod-to-pod traffic reaches iptables because hack/node.sh creates the bridge with
# nf_call_iptables=1 (br_netfilter); no host-wide sysctl is changed here.
#
# Environment (defaults in brackets):
#   KUBE_ROUTER_VERSION [v2.1.0]  KUSTOS_KUBE_ROUTER_HEALTH_PORT [16244]
#   KUSTOS_REAL_NODE_NAME [kustos-node-0]  KUSTOS_LOG_V [1]
set -euo pipefail
KUBE_ROUTER_VERSION=${KUBE_ROUTER_VERSION:-v2.1.0}
KUBE_ROUTER_MODULE=github.com/cloudnativelabs/kube-router/v2

krhere=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/cluster.sh
. "$krhere/cluster.sh"  # paths and helpers only (cluster.sh returns early when sourced)

log() { printf '[kube-router %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

KR_BIN=$KUSTOS_BIN/kube-router
KR_DIR=$CLUSTER_DIR/kube-router           # what `start` found, for `stop` to compare with
KR_PID=$RUN/kube-router.pid
KR_LOG=$LOGS/kube-router.log
KR_KUBECONFIG=$KCONF/kube-router.conf
HEALTH_PORT=${KUSTOS_KUBE_ROUTER_HEALTH_PORT:-16244}
REAL_NODE=${KUSTOS_REAL_NODE_NAME:-kustos-node-0}
# what kube-router v2.1.0 creates (pkg/controllers/netpol): chains in the filter table, ipsets
KR_CHAINS='^(KUBE-ROUTER-|KUBE-NWPLCY-|KUBE-POD-FW-)'
KR_SETS='^(KUBE-SRC-|KUBE-DST-|kube-router-|inet6:KUBE-|inet6:kube-router-)'

# ---------------------------------------------------------------- build

kr_have() {
  local out
  [ -x "$KR_BIN" ] || return 1
  out=$("$KR_BIN" --version 2>&1) || return 1
  [[ $out == *"version $KUBE_ROUTER_VERSION,"* ]]
}

kr_build() {
  kr_have && { log "kube-router $KUBE_ROUTER_VERSION cached"; return; }
  log "building kube-router $KUBE_ROUTER_VERSION from $KUBE_ROUTER_MODULE (a few minutes on 2 cores)"
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
  local dir=$KUSTOS_CACHE/build/kube-router-$KUBE_ROUTER_VERSION
  mkdir -p "$dir" "$KUSTOS_BIN"
  # a throwaway module requiring the pinned version (hack/build-tools.sh's pattern)
  cat >"$dir/go.mod" <<EOF
module kustos.dev/hack/kube-router

go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')

require $KUBE_ROUTER_MODULE $KUBE_ROUTER_VERSION
EOF
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/kube-router"\n' "$KUBE_ROUTER_MODULE" >"$dir/tools.go"
  (cd "$dir" && { go mod tidy >/dev/null 2>&1 || go mod tidy; })
  (cd "$dir" && go build -trimpath -ldflags "-s -w \
      -X $KUBE_ROUTER_MODULE/pkg/version.Version=$KUBE_ROUTER_VERSION \
      -X $KUBE_ROUTER_MODULE/pkg/version.BuildDate=1970-01-01T00:00:00Z" \
      -o "$KR_BIN.tmp" "$KUBE_ROUTER_MODULE/cmd/kube-router")
  mv "$KR_BIN.tmp" "$KR_BIN"
  kr_have || die "built $KR_BIN but its --version does not name $KUBE_ROUTER_VERSION"
}

# ---------------------------------------------------------------- host state

# chains FILE: "TABLE CHAIN" of every iptables chain; sets FILE: every ipset name
kr_chains() {
  local t
  for t in filter nat mangle raw; do
    iptables-save -t "$t" 2>/dev/null | sed -n "s/^:\([^ ]*\) .*/$t \1/p"
  done | sort
}
kr_sets() { ipset list -n 2>/dev/null | sort; }
# the rule set without counters and without kube-proxy's per-Service rules, which change
# whenever a Service or its endpoints do (hack/node.sh verify-clean compares everything)
kr_rules() {
  iptables-save 2>/dev/null | grep -Ev '^#' | sed 's/\[[0-9]*:[0-9]*\]//' |
    grep -Ev 'KUBE-(SVC|SEP|SVL|EXT|FW)-|^-A KUBE-(SERVICES|EXTERNAL-SERVICES|NODEPORTS|PROXY-FIREWALL) '
}

record_before() {
  mkdir -p "$KR_DIR"
  [ -f "$KR_DIR/recorded" ] && return  # a second `start` keeps the first record
  kr_chains >"$KR_DIR/chains-before"
  kr_sets >"$KR_DIR/sets-before"
  kr_rules >"$KR_DIR/iptables-before"
  touch "$KR_DIR/recorded"
}

# ---------------------------------------------------------------- start

kr_pid() { pid_of kube-router; }

kr_healthy() { curl -fsS --max-time 3 "http://127.0.0.1:$HEALTH_PORT/healthz" >/dev/null 2>&1; }
# the controller has synced once: its top-level chains are hooked into the filter table
kr_programmed() {
  local c
  for c in INPUT FORWARD OUTPUT; do
    iptables -t filter -S "$c" 2>/dev/null | grep -q -- "-j KUBE-ROUTER-$c" || return 1
  done
}

# a client certificate and read-only RBAC: kube-router starts informers for everything its
# controllers could use (Services and endpoints too) and waits for all of them to sync
ensure_identity() {
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  cert kube-router "/CN=kustos:kube-router" "$client"
  kubeconfig "$KR_KUBECONFIG" kube-router
  kc apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "kustos:kube-router"}
rules:
- apiGroups: [""]
  resources: [pods, namespaces, nodes, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kustos:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "kustos:kube-router"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:kube-router"}
EOF
}

kr_start() {
  [ "$(id -u)" = 0 ] || die "kube-router needs root (iptables, ipset)"
  load_ports
  KUBECTL_BIN=$(find_kubectl)
  health_apiserver || die "the control plane is not running (hack/cluster.sh up)"
  [ "$(kc get node "$REAL_NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] ||
    die "the real node $REAL_NODE is not Ready (hack/cluster.sh up as root starts it)"
  if pid=$(kr_pid); then log "already running (pid $pid)"; return; fi
  [ "${KUSTOS_NO_BUILD:-0}" = 1 ] && ! kr_have && die "missing $KR_BIN (KUSTOS_NO_BUILD=1; run hack/kube-router.sh build)"
  kr_build
  "$krhere/host-packages.sh" netpol || die "could not install ipset (hack/host-packages.sh netpol)"
  ! port_busy "$HEALTH_PORT" || die "port $HEALTH_PORT is taken (KUSTOS_KUBE_ROUTER_HEALTH_PORT)"
  mkdir -p "$LOGS" "$RUN"
  record_before
  ensure_identity
  [ -f "$KR_LOG" ] && mv -f "$KR_LOG" "$KR_LOG.prev"
  log "starting kube-router $KUBE_ROUTER_VERSION (network policies only) for $REAL_NODE"
  setsid "$KR_BIN" --run-firewall=true --run-router=false --run-service-proxy=false \
    --kubeconfig "$KR_KUBECONFIG" --hostname-override "$REAL_NODE" \
    --service-cluster-ip-range "$SERVICE_CIDR" --enable-ipv4=true --enable-ipv6=false \
    --health-port "$HEALTH_PORT" --metrics-port 0 --v "${KUSTOS_LOG_V:-1}" \
    </dev/null >"$KR_LOG" 2>&1 9>&- &
  echo $! >"$KR_PID"
  local t0=$SECONDS next=$((SECONDS + 10))
  until kr_healthy && kr_programmed; do
    kr_pid >/dev/null || { tail -n 30 "$KR_LOG" >&2; die "kube-router exited (log: $KR_LOG)"; }
    ((SECONDS - t0 < 120)) || { tail -n 30 "$KR_LOG" >&2; die "kube-router not healthy after 120s (log: $KR_LOG)"; }
    if ((SECONDS >= next)); then log "  still waiting for kube-router ($((SECONDS - t0))s)"; next=$((SECONDS + 10)); fi
    sleep 0.2
  done
  log "kube-router enforcing NetworkPolicies on $REAL_NODE ($((SECONDS - t0))s)"
}

# ---------------------------------------------------------------- stop

kr_stop() {
  [ "$(id -u)" = 0 ] || die "needs root (iptables, ipset)"
  local pid pids=()
  pid=$(kr_pid) && pids+=("$pid")
  rm -f "$KR_PID"
  terminate kube-router 20 "${pids[@]}"
  [ -f "$KR_DIR/recorded" ] || { log "nothing recorded by start; nothing to clean"; return 0; }
  remove_chains
  remove_sets
  local left; left=$(kr_leftovers)
  [ -z "$left" ] || die "kube-router's state is still there (kept $KR_DIR):
$left"
  if kr_verify >/dev/null 2>&1; then
    log "stopped; iptables and ipsets as before start"
  else
    # not kube-router's (someone else changed the host meanwhile): shown, not fatal
    kr_verify || true
    log "stopped; nothing of kube-router is left, the differences above are not its own"
  fi
  rm -rf "$KR_DIR"
}

# what `stop` must have removed: kube-router's chains and ipsets that `start` did not find,
# and any rule that still names one of its chains
kr_leftovers() {
  kr_chains | grep -E " ${KR_CHAINS#^}" | grep -vxF -f "$KR_DIR/chains-before" || true
  kr_sets | grep -E "$KR_SETS" | grep -vxF -f "$KR_DIR/sets-before" || true
  iptables-save 2>/dev/null | grep -E "^-A .*-j ${KR_CHAINS#^}" | grep -vxF -f "$KR_DIR/iptables-before" || true
}

# the chains kube-router names that did not exist at start: first every rule that jumps to
# one of them (in any chain), then their rules, then the chains
remove_chains() {
  local t chain new=()
  for t in filter nat mangle raw; do
    new=()
    for chain in $(iptables-save -t "$t" 2>/dev/null | sed -n 's/^:\([^ ]*\) .*/\1/p' | grep -E "$KR_CHAINS"); do
      grep -qx "$t $chain" "$KR_DIR/chains-before" && continue
      new+=("$chain")
    done
    [ ${#new[@]} -eq 0 ] && continue
    log "removing ${#new[@]} chains of kube-router from the $t table"
    local alt; alt=$(IFS='|'; echo "${new[*]}")
    iptables-save -t "$t" | grep -E "^-A [^ ]+ .*-j ($alt)( |$)" | sed 's/^-A /-D /' | while read -r rule; do
      eval "iptables -t $t $rule" 2>/dev/null || true
    done || true  # grep finds no rule: not an error
    for chain in "${new[@]}"; do iptables -t "$t" -F "$chain" 2>/dev/null || true; done
    for chain in "${new[@]}"; do iptables -t "$t" -X "$chain" 2>/dev/null || log "WARNING: could not delete $t $chain"; done
  done
}

# ipsets kube-router names that did not exist at start (after the rules that referenced them)
remove_sets() {
  local s n=0
  for s in $(kr_sets | grep -E "$KR_SETS"); do
    grep -qx -- "$s" "$KR_DIR/sets-before" && continue
    ipset destroy "$s" 2>/dev/null || log "WARNING: could not destroy ipset $s"
    n=$((n + 1))
  done
  ((n == 0)) || log "destroyed $n ipsets of kube-router"
}

kr_verify() {
  [ -f "$KR_DIR/recorded" ] || die "nothing recorded: hack/kube-router.sh start records the host first"
  local rc=0 now
  now=$(mktemp)
  kr_rules >"$now"
  diff -u "$KR_DIR/iptables-before" "$now" || rc=1
  kr_sets >"$now"
  diff -u "$KR_DIR/sets-before" "$now" || rc=1
  rm -f "$now"
  if ((rc == 0)); then log "iptables and ipsets match what start found"; else log "iptables or ipsets differ (above; - before start, + now)"; fi
  return $rc
}

kr_status() {
  local pid
  if pid=$(kr_pid); then
    if kr_healthy; then printf '%-24s running  pid %-8s healthy\n' kube-router "$pid"; return 0; fi
    printf '%-24s running  pid %-8s UNHEALTHY\n' kube-router "$pid"; return 1
  fi
  printf '%-24s stopped\n' kube-router; return 1
}

case ${1:-} in
  build) kr_build ;;
  start) kr_start ;;
  stop) kr_stop ;;
  status) kr_status ;;
  verify-clean) kr_verify ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
