#!/usr/bin/env bash
# Install the Debian packages the local cluster and the image builds need on this host,
# only those whose command or file is missing (apt-get; root). Safe to run again.
#
#   hack/host-packages.sh node      containerd, runc, CNI plugins, iptables, socat, gcc...
#   hack/host-packages.sh images    mmdebstrap and what the image builds chroot with
#   hack/host-packages.sh netpol    ipset, for kube-router's NetworkPolicy enforcement
#   hack/host-packages.sh argocd    redis-server and git, for hack/argocd.sh (Argo CD's cache, the local Git repo)
#   hack/host-packages.sh kafka     a JRE and Maven, for hack/kafka.sh (the payload-log broker tests)
#   hack/host-packages.sh WHAT:PACKAGE ...
#                                   WHAT: a command, or an absolute path that must exist
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then exec sudo "$0" "$@"; fi

# The real node (hack/node.sh) and the throwaway containerd of tests/images.
NODE=(ctr:containerd containerd:containerd runc:runc socat:socat iptables:iptables
      conntrack:conntrack ip:iproute2 gcc:gcc curl:curl
      # pause.c is linked statically: libc.a
      /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev
      /usr/lib/cni/bridge:containernetworking-plugins)
# hack/image_build.py: mmdebstrap runs apt with Debian's keyring; chroot/mount; strip
# (images/prune.py strip, run on the host against the image tree).
IMAGES=(mmdebstrap:mmdebstrap tar:tar mount:mount chroot:coreutils python3:python3 gpgv:gpgv
        strip:binutils
        /usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring)
# hack/kube-router.sh: the network-policy controller drives iptables and ipset.
NETPOL=(iptables:iptables iptables-save:iptables ipset:ipset)
# hack/argocd.sh: Argo CD's cache (redis, no persistence) and the Git repository it syncs from.
ARGOCD=(redis-server:redis-server git:git /usr/lib/git-core/git-daemon:git)
# hack/kafka.sh: Maven resolves the broker's jars; the tests run it on a JRE (17 or later).
KAFKA=(java:openjdk-17-jre-headless mvn:maven)

wanted=()
for arg in "$@"; do
  case $arg in
    node) wanted+=("${NODE[@]}") ;;
    images) wanted+=("${IMAGES[@]}") ;;
    netpol) wanted+=("${NETPOL[@]}") ;;
    argocd) wanted+=("${ARGOCD[@]}") ;;
    kafka) wanted+=("${KAFKA[@]}") ;;
    *:*) wanted+=("$arg") ;;
    *) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

missing=()
for pair in "${wanted[@]}"; do
  what=${pair%%:*} pkg=${pair#*:}
  if [[ $what == /* ]]; then [[ -e $what ]] && continue
  else command -v "$what" >/dev/null 2>&1 && continue; fi
  [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
done
((${#missing[@]})) || exit 0

echo "==> apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Packages never start their services here (containerd's own unit would run beside ours).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
fi
trap '[[ $own_policy == 1 ]] && rm -f "$policy"' EXIT
# A fresh machine has no package lists yet.
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
