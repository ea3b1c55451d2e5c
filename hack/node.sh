#!/usr/bin/env bash
# A real kubelet node beside the kwok node of hack/cluster.sh: containerd (Debian's, with a
# config of its own), kubelet, kube-proxy (iptables) and CoreDNS on the host, pods on a CNI
# bridge. Needs root. Started and stopped by hack/cluster.sh (KUSTOS_REAL_NODE=0 skips it).
#
#   hack/node.sh up              start the node (control plane must be up), wait until Ready
#   hack/node.sh down            stop it and restore the host: processes, mounts, netns,
#                                cgroups, iptables, bridge, sysctls
#   hack/node.sh status          one line per node component; exit 0 only if all are healthy
#   hack/node.sh ctr ARGS...     ctr against the node's containerd (namespace k8s.io)
#   hack/node.sh images          (re)build and import the local images (pause, busybox)
#   hack/node.sh snapshot FILE   record host state (processes, mounts, links, routes,
#                                iptables, sysctls, cgroups, state dirs) into FILE
#   hack/node.sh verify-clean    compare the host with the snapshot taken by the last `up`
#   hack/node.sh smoke [--keep]  end-to-end check: Deployment, Service, DNS, apiserver, logs,
#                                exec, port-forward, isolation (hack/node/smoke.yaml)
#
# Network rules: pod traffic stays on this machine. Pods get routes to the pod and service
# CIDRs only (no default route), no masquerade to the outside, and a mangle/FORWARD rule drops
# anything forwarded from or to the bridge via another interface. Forwarding is enabled on
# the bridge only (net.ipv4.conf.kustos0.forwarding), not host-wide.
#
# Environment (defaults in brackets):
#   KUSTOS_REAL_NODE_NAME [kustos-node-0]  KUSTOS_NODE_POD_CIDR [10.244.0.0/24]
#   KUSTOS_BRIDGE [kustos0]  KUSTOS_KUBELET_PORT [16250]  KUSTOS_KUBELET_HEALTHZ_PORT [16248]
#   KUSTOS_PROXY_HEALTHZ_PORT [16256]  KUSTOS_PROXY_METRICS_PORT [16249]
#   KUSTOS_DNS_HEALTH_PORT [16253]  KUSTOS_IMPORT_IMAGES [1]: run hack/images.sh import
set -euo pipefail
nhere=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/cluster.sh
. "$nhere/cluster.sh"  # functions and paths only (cluster.sh returns early when sourced)

log() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

NODE_DIR=$CLUSTER_DIR/node
HOST_DIR=$CLUSTER_DIR/host                # what `up` found on the host, for `down` to restore
CTRD_ROOT=$KUSTOS_CACHE/containerd        # image store: a cache, survives `down`
CTRD_STATE=$NODE_DIR/containerd
CTRD_SOCK=$NODE_DIR/containerd.sock
KUBELET_ROOT=$NODE_DIR/kubelet
CNI_CONF_DIR=$NODE_DIR/cni/net.d
CNI_IPAM_DIR=$NODE_DIR/cni/ipam
IMAGES_DIR=$KUSTOS_CACHE/node-images
PAUSE_IMAGE=kustos.local/pause:1
BUSYBOX_IMAGE=kustos.local/busybox:1
KUSTOS_IMAGE=ghcr.io/kustos-dev/kustos:0.1.0  # from hack/images.sh, for the smoke test
NODE_COMPONENTS=(containerd apiserver-proxy coredns kubelet kube-proxy)

load_node_env() {
  load_ports
  REAL_NODE=${KUSTOS_REAL_NODE_NAME:-kustos-node-0}
  NODE_POD_CIDR=${KUSTOS_NODE_POD_CIDR:-10.244.0.0/24}
  BRIDGE=${KUSTOS_BRIDGE:-kustos0}
  local net=${NODE_POD_CIDR%/*}
  BRIDGE_IP=${net%.*}.$((${net##*.} + 1))
  KUBELET_PORT=${KUSTOS_KUBELET_PORT:-16250}
  KUBELET_HEALTHZ_PORT=${KUSTOS_KUBELET_HEALTHZ_PORT:-16248}
  PROXY_HEALTHZ_PORT=${KUSTOS_PROXY_HEALTHZ_PORT:-16256}
  PROXY_METRICS_PORT=${KUSTOS_PROXY_METRICS_PORT:-16249}
  DNS_HEALTH_PORT=${KUSTOS_DNS_HEALTH_PORT:-16253}
}

# binary NAME: what runs as NAME (the Kubernetes binaries come from our cache, the rest from Debian)
binary() {
  case $1 in
    containerd) echo /usr/bin/containerd ;;
    apiserver-proxy) echo /usr/bin/socat ;;
    *) echo "$KUSTOS_BIN/$1" ;;
  esac
}

# node_pid NAME: the pid if NAME runs (its pid file names a live process of the right binary)
node_pid() {
  local pid argv0
  [ -f "$RUN/$1.pid" ] || return 1
  pid=$(<"$RUN/$1.pid")
  [ -n "$pid" ] && alive "$pid" || return 1
  argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1) || return 1
  [ "$argv0" = "$(binary "$1")" ] || return 1
  echo "$pid"
}

node_start() {
  local name=$1; shift
  local logf="$LOGS/$name.log"
  [ -f "$logf" ] && mv -f "$logf" "$logf.prev"
  setsid "$(binary "$name")" "$@" </dev/null >"$logf" 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
  echo $! >"$RUN/$name.pid"
}

# node_wait NAME TIMEOUT CHECK...: like cluster.sh's wait_healthy for node components
node_wait() {
  local name=$1 timeout=$2; shift 2
  local t0=$SECONDS next=$((SECONDS + 10))
  until "$@" >/dev/null 2>&1; do
    if ! node_pid "$name" >/dev/null; then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name exited (log: $LOGS/$name.log)"
    fi
    ((SECONDS - t0 < timeout)) || { tail -n 30 "$LOGS/$name.log" >&2; die "$name not healthy after ${timeout}s (log: $LOGS/$name.log)"; }
    if ((SECONDS >= next)); then log "  still waiting for $name ($((SECONDS - t0))s)"; next=$((SECONDS + 10)); fi
    sleep 0.2
  done
}

ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }
health_containerd() { ctr --address "$CTRD_SOCK" version >/dev/null 2>&1; }
health_apiserver_proxy() { curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://$BRIDGE_IP:$APISERVER_PORT/readyz" | grep -q ok; }
health_kubelet() { [ "$(curl -fsS --max-time 3 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz")" = ok ]; }
health_kube_proxy() { curl -fsS --max-time 3 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" >/dev/null; }
health_coredns() { [ "$(curl -fsS --max-time 3 "http://127.0.0.1:$DNS_HEALTH_PORT/health")" = OK ]; }
node_health() {
  case $1 in
    containerd) health_containerd ;; apiserver-proxy) health_apiserver_proxy ;;
    kubelet) health_kubelet ;; kube-proxy) health_kube_proxy ;; coredns) health_coredns ;;
  esac
}
node_ready() {
  [ "$(kc get node "$REAL_NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# ---------------------------------------------------------------- host state

# sysctl_set KEY VALUE: records the original value once (restored by `down`), then sets it
sysctl_set() {
  local key=$1 val=$2 f=$HOST_DIR/sysctl.env
  local cur; cur=$(sysctl -n "$key")
  grep -q "^$key=" "$f" 2>/dev/null || echo "$key=$cur" >>"$f"
  [ "$cur" = "$val" ] || sysctl -qw "$key=$val"
}

# Kubelet sets these at start (setupKernelTunables); `down` puts back what was there.
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

record_host() {
  mkdir -p "$HOST_DIR"
  [ -f "$HOST_DIR/recorded" ] && return  # a second `up` keeps the first record
  "$nhere/node.sh" snapshot "$HOST_DIR/before.txt"
  local fam t
  : >"$HOST_DIR/chains-before"
  for fam in iptables ip6tables; do
    for t in filter nat mangle raw; do
      "$fam-save" -t "$t" 2>/dev/null | sed -n "s/^:\(KUBE-[^ ]*\) .*/$fam $t \1/p" >>"$HOST_DIR/chains-before"
    done
  done
  : >"$HOST_DIR/sysctl.env"
  local k
  for k in "${KUBELET_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")" >>"$HOST_DIR/sysctl.env"; done
  # directories the runtime or kubelet create outside our dirs: remove at down only if new
  : >"$HOST_DIR/created-dirs"
  local d
  for d in /var/run/netns /run/containerd /var/log/containers /var/lib/cni /etc/cni /opt/cni; do
    [ -e "$d" ] || echo "$d" >>"$HOST_DIR/created-dirs"
  done
  ls /var/run/netns 2>/dev/null >"$HOST_DIR/netns-before" || true
  touch "$HOST_DIR/recorded"
}

# the bridge with the gateway address, made before CNI so the bridge plugin reuses it and
# the host (CoreDNS, apiserver proxy, kubelet) has an address the pods can reach
ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE $BRIDGE_IP/${NODE_POD_CIDR#*/}"
    # nf_call_iptables on this bridge only: kube-proxy must see pod-to-pod traffic on it
    ip link add "$BRIDGE" type bridge nf_call_iptables 1
  fi
  ip addr show dev "$BRIDGE" | grep -q " $BRIDGE_IP/" || ip addr add "$BRIDGE_IP/${NODE_POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # service IPs route to the bridge, never to the default gateway (an unused ClusterIP
  # would otherwise leave the machine); the source is the bridge address
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$BRIDGE_IP"
  # routing from the bridge: the packets that arrive on it (pod -> ClusterIP -> pod)
  sysctl_set "net.ipv4.conf.$BRIDGE.forwarding" 1
}

# own mangle chain (mangle FORWARD runs before filter FORWARD, where kube-proxy accepts
# its marked traffic): drop whatever is forwarded from the bridge to another interface or
# to the bridge from another interface
ensure_firewall() {
  local c=KUSTOS-NODE-FORWARD
  iptables -t mangle -N "$c" 2>/dev/null || iptables -t mangle -F "$c"
  iptables -t mangle -A "$c" -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "kustos: pod traffic stays on this machine" -j DROP
  iptables -t mangle -A "$c" ! -i "$BRIDGE" -o "$BRIDGE" -m comment --comment "kustos: nothing forwarded into pods" -j DROP
  iptables -t mangle -C FORWARD -j "$c" -m comment --comment kustos-node 2>/dev/null ||
    iptables -t mangle -I FORWARD 1 -j "$c" -m comment --comment kustos-node
}

remove_firewall() {
  local c=KUSTOS-NODE-FORWARD
  while iptables -t mangle -D FORWARD -j "$c" -m comment --comment kustos-node 2>/dev/null; do :; done
  iptables -t mangle -F "$c" 2>/dev/null && iptables -t mangle -X "$c" 2>/dev/null || true
}

# ---------------------------------------------------------------- configuration

write_configs() {
  mkdir -p "$NODE_DIR" "$CTRD_STATE" "$CTRD_ROOT" "$CNI_CONF_DIR" "$CNI_IPAM_DIR" "$KUBELET_ROOT" "$NODE_DIR/pod-logs"
  chmod 700 "$NODE_DIR"
  cat >"$NODE_DIR/containerd.toml" <<EOF
# containerd for the kustos real node: own root, state and socket (not /var/lib/containerd,
# /run/containerd), CRI only, no registry (images are imported with hack/node.sh ctr/images)
version = 2
root = "$CTRD_ROOT"
state = "$CTRD_STATE"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_ROOT/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # the VM lacks CAP_SYS_RESOURCE: without this every sandbox fails ("can't get final child's PID")
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state, default /run/containerd/runc
        Root = "$CTRD_STATE/runc"
EOF
  # pods: no default route, only the pod and service CIDRs; no masquerade; the bridge
  # address is ours (isGateway false: the plugin would otherwise set net.ipv4.ip_forward=1)
  cat >"$CNI_CONF_DIR/10-kustos.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kustos",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_IPAM_DIR",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$BRIDGE_IP"}]
      }
    }
  ]
}
EOF
  : >"$NODE_DIR/resolv.conf"  # no host search domains or upstream servers for pods
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host without systemd as PID 1
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: $BRIDGE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
rotateCertificates: false
clusterDomain: cluster.local
clusterDNS: [$BRIDGE_IP]
resolvConf: $NODE_DIR/resolv.conf
podLogsDir: $NODE_DIR/pod-logs
# default /usr/libexec/kubernetes/kubelet-plugins/volume/exec, created at start
volumePluginDir: $NODE_DIR/volume-plugins
# no registry: never garbage-collect imported images, evict only when the disk is really full
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
maxPods: 60
oomScoreAdj: 0
shutdownGracePeriod: 0s
EOF
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $KCONF/kube-proxy.conf
hostnameOverride: $REAL_NODE
mode: iptables
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
# pod-to-pod traffic is not masqueraded; host-to-ClusterIP comes from the bridge address
clusterCIDR: $NODE_POD_CIDR
detectLocalMode: ClusterCIDR
nodePortAddresses: [$BRIDGE_IP/32]
oomScoreAdj: 0
iptables:
  localhostNodePorts: false   # would set net.ipv4.conf.all.route_localnet=1
  masqueradeAll: false
  minSyncPeriod: 1s
  syncPeriod: 30s
conntrack:                    # 0 everywhere: leave the host's conntrack sysctls alone
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
EOF
  # CoreDNS: cluster names only; anything else is REFUSED (no forward plugin is even built in)
  cat >"$NODE_DIR/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $BRIDGE_IP
    errors
    health 127.0.0.1:$DNS_HEALTH_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KCONF/coredns.conf kustos
    }
    cache 30
}
EOF
}

ensure_node_pki() {
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  cert kubelet "/O=system:nodes/CN=system:node:$REAL_NODE" "$client"
  cert kubelet-serving "/CN=$REAL_NODE" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$REAL_NODE,IP:$BRIDGE_IP"
  cert kube-proxy "/CN=system:kube-proxy" "$client"
  cert coredns "/CN=kustos:coredns" "$client"
  local c
  for c in kubelet kube-proxy coredns; do kubeconfig "$KCONF/$c.conf" "$c"; done
  # CoreDNS reads Services, EndpointSlices and Namespaces
  kc apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "kustos:coredns"}
rules:
- apiGroups: [""]
  resources: [services, endpoints, namespaces, pods]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kustos:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "kustos:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kustos:coredns"}
EOF
}

# ---------------------------------------------------------------- images

# build_images: the sandbox image (pause.c, static) and a busybox image (Debian's
# busybox-static: sh, httpd, wget, nslookup) as one-layer docker archives in the cache
build_images() {
  mkdir -p "$IMAGES_DIR"
  local src=$nhere/node
  if [ ! -f "$IMAGES_DIR/pause.tar" ] || [ "$src/pause.c" -nt "$IMAGES_DIR/pause.tar" ]; then
    log "building $PAUSE_IMAGE"
    gcc -static -O2 -s -o "$IMAGES_DIR/pause" "$src/pause.c"
    python3 "$src/mkimage.py" "$IMAGES_DIR/pause.tar" "$PAUSE_IMAGE" \
      --entrypoint '["/pause"]' --file "$IMAGES_DIR/pause:/pause"
  fi
  if [ ! -f "$IMAGES_DIR/busybox.tar" ]; then
    log "building $BUSYBOX_IMAGE from Debian's busybox-static"
    local tmp; tmp=$(mktemp -d)
    # A fresh machine has no package lists yet.
    (cd "$tmp" && { apt-get download busybox-static >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get download busybox-static >/dev/null; }; }) ||
      die "apt-get download busybox-static failed (Debian mirror unreachable?)"
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/x"
    local links=() a
    for a in $("$tmp/x/bin/busybox" --list); do [ "$a" = busybox ] || links+=(--link "/bin/$a:busybox"); done
    python3 "$src/mkimage.py" "$IMAGES_DIR/busybox.tar" "$BUSYBOX_IMAGE" --cmd '["/bin/sh"]' \
      --file "$tmp/x/bin/busybox:/bin/busybox" "${links[@]}" \
      --text "/etc/passwd:root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
" --text "/etc/group:root:x:0:
nogroup:x:65534:
" --text "/www/index.html:hello from kustos-node
"
    rm -rf "$tmp"
  fi
}

import_images() {
  build_images
  local name img
  for name in pause busybox; do
    # once per `up` (the image store survives `down`; an import of the same content is cheap)
    [ -f "$NODE_DIR/imported-$name" ] && [ "$NODE_DIR/imported-$name" -nt "$IMAGES_DIR/$name.tar" ] && continue
    ctr_ images import "$IMAGES_DIR/$name.tar" >/dev/null
    touch "$NODE_DIR/imported-$name"
  done
  if [ "${KUSTOS_IMPORT_IMAGES:-1}" = 1 ] && [ -f "$root/hack/images.sh" ] && grep -q 'import' "$root/hack/images.sh"; then
    log "importing the Kustos images (hack/images.sh import)"
    # Fatal: a node without the images (or with stale ones) would run what the tests and
    # the samples do not expect.
    CONTAINERD_ADDRESS=$CTRD_SOCK bash "$root/hack/images.sh" import >"$LOGS/images-import.log" 2>&1 ||
      die "hack/images.sh import failed: $(tail -3 "$LOGS/images-import.log")"
  fi
}

# ---------------------------------------------------------------- up

node_up() {
  [ "$(id -u)" = 0 ] || die "the real node needs root (KUSTOS_REAL_NODE=0 for kwok only)"
  load_node_env
  KUBECTL_BIN=$(find_kubectl)
  health_apiserver || die "the control plane is not running (hack/cluster.sh up)"
  local t0=$SECONDS c
  for c in kubelet kube-proxy coredns; do
    [ -x "$KUSTOS_BIN/$c" ] && continue
    [ "${KUSTOS_NO_BUILD:-0}" = 1 ] && die "missing $KUSTOS_BIN/$c (KUSTOS_NO_BUILD=1; run hack/build-tools.sh node)"
    log "building kubelet, kube-proxy, coredns (hack/build-tools.sh node)"
    "$nhere/build-tools.sh" node
    break
  done
  "$nhere/host-packages.sh" node || die "could not install the node's Debian packages (hack/host-packages.sh node)"
  ((${#CTRD_SOCK} < 100)) || die "containerd socket path too long: $CTRD_SOCK (set KUSTOS_CLUSTER_DIR shorter)"

  mkdir -p "$LOGS" "$RUN"
  record_host
  ensure_node_pki
  write_configs
  ensure_bridge
  ensure_firewall

  if ! node_pid containerd >/dev/null; then
    log "starting containerd ($CTRD_SOCK)"
    node_start containerd --config "$NODE_DIR/containerd.toml"
  fi
  node_wait containerd 60 health_containerd
  import_images

  if ! node_pid apiserver-proxy >/dev/null; then
    # pods reach the apiserver (kubernetes Service -> $BRIDGE_IP:$APISERVER_PORT) through
    # this relay; kube-apiserver itself keeps listening on 127.0.0.1 only
    log "starting apiserver relay $BRIDGE_IP:$APISERVER_PORT -> 127.0.0.1:$APISERVER_PORT"
    node_start apiserver-proxy "TCP-LISTEN:$APISERVER_PORT,bind=$BRIDGE_IP,reuseaddr,fork" "TCP:127.0.0.1:$APISERVER_PORT"
  fi
  if ! node_pid kube-proxy >/dev/null; then
    log "starting kube-proxy (iptables)"
    node_start kube-proxy --config "$NODE_DIR/kube-proxy.yaml" --v "${KUSTOS_LOG_V:-1}"
  fi
  if ! node_pid kubelet >/dev/null; then
    log "starting kubelet $REAL_NODE on $BRIDGE_IP:$KUBELET_PORT"
    node_start kubelet --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$KCONF/kubelet.conf" \
      --root-dir "$KUBELET_ROOT" --cert-dir "$KUBELET_ROOT/pki" --hostname-override "$REAL_NODE" --node-ip "$BRIDGE_IP" \
      --node-labels "type=real,kustos.dev/node=real" --v "${KUSTOS_LOG_V:-1}"
  fi
  if ! node_pid coredns >/dev/null; then
    log "starting coredns on $BRIDGE_IP:53 (cluster.local only)"
    node_start coredns -conf "$NODE_DIR/Corefile"
  fi
  node_wait apiserver-proxy 20 health_apiserver_proxy
  node_wait kube-proxy 60 health_kube_proxy
  node_wait coredns 60 health_coredns
  node_wait kubelet 120 health_kubelet
  log "waiting for node $REAL_NODE to be Ready"
  node_wait kubelet 180 node_ready
  log "node $REAL_NODE Ready in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- down

# our containerd's shims (they outlive containerd and name its socket in their arguments)
our_shims() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in *containerd-shim*"-address $CTRD_SOCK "*) echo "${p#/proc/}" ;; esac
  done
}

# cgroup directories of the node's pods (kubepods) and of containers run with
# `hack/node.sh ctr run` (k8s.io), deepest first
pod_cgroups() {
  local ctl d
  for ctl in /sys/fs/cgroup/*/; do
    for d in kubepods k8s.io; do
      [ -d "$ctl$d" ] && find "$ctl$d" -depth -type d
    done
  done
  return 0
}

# our mounts, deepest first: kubelet volumes, container rootfs, sandbox shm, netns pins
our_mounts() {
  awk '{print $5}' /proc/self/mountinfo | sed 's/\\040/ /g' |
    grep -E "^($NODE_DIR|$CTRD_ROOT|/run/netns/cni-|/var/run/netns/cni-)" | sort -r || true
}

node_down() {
  load_node_env
  [ -d "$NODE_DIR" ] || [ -d "$HOST_DIR" ] || { return 0; }
  local pid pids=() c netns=() id
  # kubelet first: it would restart what we stop below
  for c in kubelet kube-proxy coredns apiserver-proxy; do
    pid=$(node_pid "$c") && pids+=("$pid")
    rm -f "$RUN/$c.pid"
  done
  terminate "kubelet kube-proxy coredns apiserver-relay" 15 "${pids[@]}"
  # pods: remember their network namespaces, kill and delete their containers
  if node_pid containerd >/dev/null; then
    for id in $(ctr_ containers ls -q 2>/dev/null); do
      netns+=($(ctr_ containers info "$id" 2>/dev/null |
        sed -n 's/.*"path": "\(\/var\/run\/netns\/[^"]*\|\/run\/netns\/[^"]*\)".*/\1/p'))
    done
    local tasks; tasks=$(ctr_ tasks ls -q 2>/dev/null || true)
    if [ -n "$tasks" ]; then
      log "stopping $(wc -w <<<"$tasks") containers"
      for id in $tasks; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
      for id in $tasks; do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
    fi
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
  fi
  pids=(); pid=$(node_pid containerd) && pids+=("$pid")
  rm -f "$RUN/containerd.pid"
  terminate containerd 20 "${pids[@]}"
  mapfile -t pids < <(our_shims)
  terminate "containerd shims" 10 "${pids[@]}"
  # anything still in the pods' cgroups (a container whose shim was killed)
  local cg procs=()
  for cg in $(pod_cgroups); do procs+=($(cat "$cg/cgroup.procs" 2>/dev/null)); done
  if [ ${#procs[@]} -gt 0 ]; then
    log "killing leftover pod processes ${procs[*]}"
    kill -KILL "${procs[@]}" 2>/dev/null || true
    sleep 0.5
  fi
  # mounts and network namespaces
  local m
  for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  for m in /var/run/netns/cni-*; do
    [ -e "$m" ] || continue
    grep -qx "${m##*/}" "$HOST_DIR/netns-before" 2>/dev/null && continue  # not ours
    umount "$m" 2>/dev/null || true
    rm -f "$m"
  done
  for m in "${netns[@]}"; do umount "$m" 2>/dev/null || true; rm -f "$m"; done
  for cg in $(pod_cgroups); do rmdir "$cg" 2>/dev/null || log "WARNING: could not remove cgroup $cg"; done
  # iptables: kube-proxy's chains, kubelet's canaries, ours
  if [ -x "$KUSTOS_BIN/kube-proxy" ] && [ -f "$NODE_DIR/kube-proxy.yaml" ]; then
    "$KUSTOS_BIN/kube-proxy" --cleanup --config "$NODE_DIR/kube-proxy.yaml" >"$LOGS/kube-proxy-cleanup.log" 2>&1 ||
      log "WARNING: kube-proxy --cleanup failed (see $LOGS/kube-proxy-cleanup.log)"
  fi
  remove_new_kube_chains
  remove_firewall
  if ip link show "$BRIDGE" >/dev/null 2>&1; then log "removing bridge $BRIDGE"; ip link del "$BRIDGE"; fi
  restore_sysctls
  # directories the runtime and kubelet made outside ours, if they were not there before
  if [ -f "$HOST_DIR/created-dirs" ]; then
    local d
    while read -r d; do
      [ -e "$d" ] || continue
      # libcni's result cache of our sandboxes (network "kustos" and its loopback): a
      # sandbox stopped without a CNI DEL leaves its entry behind.
      [ "$d" = /var/lib/cni ] && rm -f "$d"/results/kustos-* "$d"/results/cni-loopback-*
      find "$d" -depth -mindepth 1 \( -type d -empty -delete \) -o \( -type l -lname "$NODE_DIR/*" -delete \) 2>/dev/null || true
      rmdir "$d" 2>/dev/null || log "WARNING: $d is not empty; left in place"
    done <"$HOST_DIR/created-dirs"
  fi
  # state: kubelet root, containerd state, CNI allocations (images stay in $CTRD_ROOT)
  rm -rf "$NODE_DIR"
  if [ -f "$HOST_DIR/before.txt" ]; then mv -f "$HOST_DIR/before.txt" "$CLUSTER_DIR/host-before.txt"; fi
  rm -rf "$HOST_DIR"
  log "node stopped; host restored (check: hack/node.sh verify-clean)"
}

# kubelet's KUBE-KUBELET-CANARY / KUBE-IPTABLES-HINT and anything kube-proxy left: every
# KUBE-* chain that did not exist before `up`
remove_new_kube_chains() {
  local fam save cmd t chain
  for fam in iptables ip6tables; do
    save=$fam-save cmd=$fam
    command -v "$save" >/dev/null || continue
    for t in filter nat mangle raw; do
      for chain in $("$save" -t "$t" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
        grep -qx "$fam $t $chain" "$HOST_DIR/chains-before" 2>/dev/null && continue
        # drop the rules that jump to it, then the chain
        "$save" -t "$t" | grep -E "^-A [^ ]+ .*-j $chain( |$)" | sed 's/^-A /-D /' | while read -r rule; do
          eval "$cmd -t $t $rule" 2>/dev/null || true
        done || true  # grep finds no rule: not an error
        "$cmd" -t "$t" -F "$chain" 2>/dev/null || true
        "$cmd" -t "$t" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

restore_sysctls() {
  [ -f "$HOST_DIR/sysctl.env" ] || return 0
  local kv key val
  while IFS= read -r kv; do
    key=${kv%%=*} val=${kv#*=}
    [ -e "/proc/sys/${key//.//}" ] || continue  # per-interface keys vanish with the bridge
    [ "$(sysctl -n "$key")" = "$val" ] || sysctl -qw "$key=$val"
  done <"$HOST_DIR/sysctl.env"
}

# ---------------------------------------------------------------- status, snapshot

node_status() {
  load_node_env
  local c pid ok=0 h
  for c in "${NODE_COMPONENTS[@]}"; do
    if pid=$(node_pid "$c"); then
      if node_health "$c"; then h=healthy; else h=UNHEALTHY; ok=1; fi
      printf '%-24s running  pid %-8s %s\n' "$c" "$pid" "$h"
    else
      printf '%-24s stopped\n' "$c"; ok=1
    fi
  done
  return $ok
}

# snapshot FILE: the host state `down` must restore, volatile parts filtered out
snapshot() (
  set +e +o pipefail  # an empty section is fine
  {
    echo "== processes (of the node's kind)"
    ps -eo args= | grep -E 'containerd|kubelet|kube-proxy|coredns|socat|/pause|busybox|runc' |
      grep -Ev '^(ps|grep|sort|bash|sed) ' | sort
    echo "== mounts"
    awk '{print $5, $9}' /proc/self/mountinfo | sort
    echo "== links"
    ip -o link show | sed -E 's/^[0-9]+: //; s/ link\/.*//; s/qlen [0-9]+//' | sort
    echo "== addresses"
    ip -o addr show | awk '{print $2, $3, $4}' | sort
    echo "== routes"
    ip route show table all | sort
    echo "== iptables"
    iptables-save | grep -Ev '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
    echo "== ip6tables"
    ip6tables-save 2>/dev/null | grep -Ev '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
    echo "== sysctls"
    sysctl -a 2>/dev/null | grep -Ev '^(fs\.(dentry-state|file-nr|inode-nr|inode-state|quota)|kernel\.(random|ns_last_pid|pty\.nr|sched_domain)|net\.netfilter\.nf_conntrack_count|vm\.(stat_refresh|nr_)|kernel\.tainted|fs\.binfmt_misc|net\.ipv4\.route\.gc|dev\.cdrom)' | sort
    echo "== cgroups"
    find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d | sort
    echo "== netns"
    ls /var/run/netns 2>/dev/null || true
    echo "== dirs"
    ls -d /run/* /var/run/* /var/lib/* /var/log/* /etc/cni /opt/* 2>/dev/null | sort
  } >"$1"
)

verify_clean() {
  local before=${1:-$CLUSTER_DIR/host-before.txt}
  [ -f "$before" ] || [ ! -f "$HOST_DIR/before.txt" ] || before=$HOST_DIR/before.txt
  [ -f "$before" ] || die "no snapshot: $before (taken by hack/node.sh up)"
  local now; now=$(mktemp)
  snapshot "$now"
  if diff -u "$before" "$now"; then
    log "host state matches $before"
    rm -f "$now"
  else
    log "host state differs from $before (above; - before, + now)"
    rm -f "$now"
    return 1
  fi
}

# smoke [--keep]: hack/node/smoke.yaml; checks the node end to end (pods Ready, ClusterIP
# from the host, DNS and the apiserver from a pod, logs, exec, port-forward, isolation)
node_smoke() {
  load_node_env
  KUBECTL_BIN=$(find_kubectl)
  local ns=kustos-node-smoke t0=$SECONDS ip out pf
  kc apply -f "$nhere/node/smoke.yaml" >/dev/null
  kc -n $ns rollout status deploy/web --timeout=180s >/dev/null || die "deploy/web not Ready"
  kc -n $ns wait --for=condition=Ready pod/client --timeout=180s >/dev/null || die "pod/client not Ready"
  log "pods Ready on $(kc -n $ns get pods -o 'jsonpath={range .items[*]}{.spec.nodeName} {end}')in $((SECONDS - t0))s"
  ip=$(kc -n $ns get svc web -o 'jsonpath={.spec.clusterIP}')
  # kube-proxy programs the Service within its minSyncPeriod (1 s) of the endpoints' readiness
  local deadline=$((SECONDS + 20))
  until out=$(curl -fsS --max-time 5 "http://$ip/index.html" 2>&1); do
    ((SECONDS < deadline)) || die "host -> ClusterIP $ip failed: $out"
    sleep 0.2
  done
  log "host -> ClusterIP $ip:80: $out"
  # busybox 1.35's wget crashes with -T or -O- (SIGSEGV): `timeout` and a file instead
  out=$(kc -n $ns exec client -- sh -c "timeout 5 wget -q -O /tmp/o http://web.$ns.svc.cluster.local/index.html && cat /tmp/o") ||
    die "pod -> web by DNS name failed"
  log "pod -> http://web.$ns.svc.cluster.local: $out"
  # the apiserver through the kubernetes Service, with in-cluster config and TLS verified;
  # busybox's TLS lacks the ciphers kube-apiserver offers, so a Python client from the
  # Kustos image (hack/images.sh) does this when that image is imported
  if ctr_ images ls -q | grep -qx "$KUSTOS_IMAGE"; then
    kc -n $ns delete pod apicheck --ignore-not-found >/dev/null
    kc -n $ns run apicheck --image "$KUSTOS_IMAGE" --image-pull-policy Never --restart Never \
      --overrides '{"spec":{"nodeSelector":{"type":"real"}}}' --command -- python -c \
      "import kubernetes as k; k.config.load_incluster_config(); print(k.client.Configuration.get_default_copy().host, k.client.VersionApi().get_code().git_version)" >/dev/null
    kc -n $ns wait --for=jsonpath='{.status.phase}'=Succeeded pod/apicheck --timeout=120s >/dev/null ||
      { kc -n $ns logs apicheck >&2 || true; die "pod -> kubernetes Service (in-cluster config) failed"; }
    log "pod -> apiserver via in-cluster config: $(kc -n $ns logs apicheck)"
  else
    out=$(kc -n $ns exec client -- sh -c 'timeout 5 wget -q -O /tmp/a https://kubernetes.default.svc/version' 2>&1) || true
    [[ $out == *"alert code"* ]] || die "pod -> https://kubernetes.default.svc: no TLS answer: $out"
    log "pod -> https://kubernetes.default.svc: TLS answered (no $KUSTOS_IMAGE for a full check)"
  fi
  if kc -n $ns exec client -- nslookup example.com >/dev/null 2>&1; then die "a pod resolved example.com"; fi
  log "pod -> nslookup example.com: fails (cluster names only)"
  if kc -n $ns exec client -- timeout 3 wget -q -O /tmp/x http://1.1.1.1/ >/dev/null 2>&1; then die "a pod reached 1.1.1.1"; fi
  log "pod -> http://1.1.1.1: fails (no route off the machine)"
  kc -n $ns logs deploy/web --tail=2 >/dev/null || die "kubectl logs failed"
  log "kubectl logs: ok"
  pf=$(mktemp)
  # the binary itself, not the kc function: $! must be kubectl, not a subshell
  "$KUBECTL_BIN" --kubeconfig "$ADMIN_KUBECONFIG" -n $ns port-forward svc/web 18080:80 >"$pf" 2>&1 &
  local pfpid=$! i
  for i in $(seq 50); do grep -q Forwarding "$pf" && break; sleep 0.2; done
  out=$(curl -fsS --max-time 5 http://127.0.0.1:18080/index.html) || { kill $pfpid; cat "$pf"; die "port-forward failed"; }
  kill $pfpid; wait $pfpid 2>/dev/null || true; rm -f "$pf"
  log "kubectl port-forward svc/web: $out"
  [ "${1:-}" = --keep ] || kc delete namespace $ns --wait=false >/dev/null
  log "smoke test passed in $((SECONDS - t0))s"
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

case ${1:-} in
  up) [ -n "${KUSTOS_CLUSTER_LOCKED:-}" ] || lock; node_up ;;
  down) [ -n "${KUSTOS_CLUSTER_LOCKED:-}" ] || lock; node_down ;;
  status) node_status ;;
  ctr) shift; load_node_env; ctr_ "$@" ;;
  images) load_node_env; mkdir -p "$NODE_DIR" "$LOGS"; import_images ;;
  snapshot) snapshot "${2:?file}" ;;
  verify-clean) shift; verify_clean "$@" ;;
  smoke) shift; node_smoke "$@" ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
