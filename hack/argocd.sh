#!/usr/bin/env bash
# Argo CD for real, as host processes against the local cluster (tests/integration/test_argocd_live.py).
#
#   hack/argocd.sh build   build the application-controller and repo-server (one multi-call
#                          binary of our own, no UI) and kustomize into $KUSTOS_BIN; idempotent
#   hack/argocd.sh start   CRDs and ConfigMaps in namespace argocd, then redis, a git daemon
#                          serving .cluster/argocd/git/ (the chart, the kustomize install and
#                          the samples of this checkout), the repo-server and the controller,
#                          all on 127.0.0.1; a no-op for what already runs
#   hack/argocd.sh stop    stop what start started
#   hack/argocd.sh publish refresh the local Git repository from the working tree (a commit)
#   hack/argocd.sh start-servers   only redis, the git daemon and the repo-server (no cluster needed)
#
# Needs KUBECONFIG (the Makefile's local one by default) and git, redis-server (hack/host-packages.sh argocd).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=hack/versions.sh
. "$here/versions.sh"

ARGOCD_VERSION=${ARGOCD_VERSION:-v3.6.2}
# argo-cd v3.6 says `go 1.27.0` in its go.mod: the build fetches that toolchain (golang.org/toolchain)
# through the module proxy unless the local go is new enough.
ARGOCD_GOTOOLCHAIN=${ARGOCD_GOTOOLCHAIN:-go1.27.4}
KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.8.0}
# loopback ports (the Argo CD defaults are 8081/8082/6379; ours avoid clashing with a real one)
ARGOCD_REDIS_PORT=${ARGOCD_REDIS_PORT:-17379}
ARGOCD_REPO_PORT=${ARGOCD_REPO_PORT:-17081}
ARGOCD_REPO_METRICS_PORT=${ARGOCD_REPO_METRICS_PORT:-17084}
ARGOCD_CONTROLLER_METRICS_PORT=${ARGOCD_CONTROLLER_METRICS_PORT:-17082}
ARGOCD_GIT_PORT=${ARGOCD_GIT_PORT:-17418}
export KUBECONFIG=${KUBECONFIG:-${KUSTOS_CLUSTER_DIR:-$root/.cluster}/kubeconfig}

cluster_dir=${KUSTOS_CLUSTER_DIR:-$root/.cluster}
state=$cluster_dir/argocd
run=$state/run
logs=$cluster_dir/logs
work="$KUSTOS_CACHE/build"

log() { printf '[argocd %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# have NAME WANT ARG: cached and `NAME ARG` mentions WANT (as in build-tools.sh)
have() {
  local out
  [ -x "$KUSTOS_BIN/$1" ] || return 1
  out=$("$KUSTOS_BIN/$1" "$3" 2>&1) || return 1
  [[ $out == *"$2"* ]]
}

build_kustomize() {
  have kustomize "$KUSTOMIZE_VERSION" version && { log "kustomize cached"; return; }
  log "building kustomize $KUSTOMIZE_VERSION"
  local dir="$work/kustomize-$KUSTOMIZE_VERSION"
  mkdir -p "$dir"
  printf 'module kustos.dev/hack/kustomize\n\ngo %s\n\nrequire sigs.k8s.io/kustomize/kustomize/v5 %s\n' \
    "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')" "$KUSTOMIZE_VERSION" >"$dir/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/kustomize/kustomize/v5"\n' >"$dir/tools.go"
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  (cd "$dir" && go build -trimpath \
     -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=$KUSTOMIZE_VERSION" \
     -o "$KUSTOS_BIN/kustomize.tmp" sigs.k8s.io/kustomize/kustomize/v5)
  mv "$KUSTOS_BIN/kustomize.tmp" "$KUSTOS_BIN/kustomize"
}

# One binary, upstream's multi-call convention (the name it runs under, or $ARGOCD_BINARY_NAME),
# with only the parts that run here: the application-controller, the repo-server and the git
# askpass helper the repo-server hands to git. Upstream's cmd/main.go also links the API server,
# whose package embeds the web UI's build output (not in the module zip).
build_argocd() {
  if have argocd "$ARGOCD_VERSION" version; then log "argocd $ARGOCD_VERSION cached"; return; fi
  log "building argocd $ARGOCD_VERSION (application-controller, repo-server) with $ARGOCD_GOTOOLCHAIN"
  local dir="$work/argocd-$ARGOCD_VERSION" t0=$SECONDS
  mkdir -p "$dir"
  export GOTOOLCHAIN=$ARGOCD_GOTOOLCHAIN
  go mod download github.com/argoproj/argo-cd/v3@"$ARGOCD_VERSION"
  local gomod
  gomod=$(go mod download -json github.com/argoproj/argo-cd/v3@"$ARGOCD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module kustos.dev/hack/argocd"
    echo
    sed -n 's/^go \(.*\)$/go \1/p' "$gomod" | head -1
    echo
    echo "require ("
    echo "	github.com/argoproj/argo-cd/v3 $ARGOCD_VERSION"
    # a nested module, replaced by ./gitops-engine upstream; published under its own tag
    echo "	github.com/argoproj/argo-cd/gitops-engine/v3 $ARGOCD_VERSION"
    echo ")"
    echo
    # upstream's replaces by version (the k8s.io pins among them), not its ./ paths
    echo "replace ("
    awk '/^replace \(/{on=1; next} on&&/^\)/{on=0} on&&/=>/&&!/=> \.\//{print}' "$gomod"
    echo ")"
  } >"$dir/go.mod"
  cat >"$dir/main.go" <<'GO'
// Command argocd: the Argo CD components Kustos' tests run, dispatched like upstream's cmd/main.go.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	appcontroller "github.com/argoproj/argo-cd/v3/cmd/argocd-application-controller/commands"
	gitaskpass "github.com/argoproj/argo-cd/v3/cmd/argocd-git-ask-pass/commands"
	reposerver "github.com/argoproj/argo-cd/v3/cmd/argocd-repo-server/commands"
	"github.com/argoproj/argo-cd/v3/common"
	"github.com/argoproj/argo-cd/v3/util/log"
)

var version = "unknown"

func init() {
	klog.SetLogger(log.NewLogrusLogger(log.NewWithCurrentConfig()))
}

func main() {
	// upstream calls grpc.DisableSRVLookups() here: it undoes what linking grpclb turns on
	// (SRV lookups of _grpclb._tcp names), and panics when grpclb is not linked, as here.
	name := filepath.Base(os.Args[0])
	if v := os.Getenv("ARGOCD_BINARY_NAME"); v != "" {
		name = v
	}
	var command *cobra.Command
	switch name {
	case common.CommandApplicationController:
		command = appcontroller.NewCommand()
	case common.CommandRepoServer:
		command = reposerver.NewCommand()
	case common.CommandGitAskPass:
		command = gitaskpass.NewCommand()
	default:
		if len(os.Args) > 1 && os.Args[1] == "version" {
			fmt.Printf("argocd %s (application-controller, repo-server, git-ask-pass)\n", version)
			return
		}
		fmt.Fprintf(os.Stderr, "run as %s, %s or %s (a link, or ARGOCD_BINARY_NAME)\n",
			common.CommandApplicationController, common.CommandRepoServer, common.CommandGitAskPass)
		os.Exit(2)
	}
	if err := command.Execute(); err != nil {
		os.Exit(1)
	}
}
GO
  rm -f "$dir/go.sum"
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  local ld="-s -w -X main.version=$ARGOCD_VERSION"
  ld+=" -X github.com/argoproj/argo-cd/v3/common.version=${ARGOCD_VERSION#v}"
  ld+=" -X github.com/argoproj/argo-cd/v3/common.buildDate=1970-01-01T00:00:00Z"
  ld+=" -X github.com/argoproj/argo-cd/v3/common.gitTreeState=clean"
  (cd "$dir" && go build -trimpath -ldflags "$ld" -o "$KUSTOS_BIN/argocd.tmp" .)
  mv "$KUSTOS_BIN/argocd.tmp" "$KUSTOS_BIN/argocd"
  local b
  for b in argocd-application-controller argocd-repo-server argocd-git-ask-pass; do
    ln -sf argocd "$KUSTOS_BIN/$b"
  done
  log "argocd built in $((SECONDS - t0)) s"
}

# The repo-server runs upstream's hack/git-verify-wrapper.sh from PATH on every manifest
# generation (deprecated signature check, called even with GPG off): the module's copy.
install_verify_wrapper() {
  local want="$KUSTOS_BIN/git-verify-wrapper.sh"
  [ -x "$want" ] && cmp -s "$want" "$(module_dir)/hack/git-verify-wrapper.sh" && return
  install -m 0755 "$(module_dir)/hack/git-verify-wrapper.sh" "$want"
  log "git-verify-wrapper.sh installed"
}

cmd_build() {
  mkdir -p "$KUSTOS_BIN" "$work"
  export GOFLAGS=-mod=mod CGO_ENABLED=0
  GOTOOLCHAIN=local build_kustomize
  build_argocd
  install_verify_wrapper
}

kubectl() { "${KUBECTL:-$root/.venv/bin/kubectl}" "$@"; }
running() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

# spawn NAME CMD...: CMD in the background (its own session), pid in run/NAME.pid, log in logs/
spawn() {
  local name=$1; shift
  if running "$name"; then log "$name already running (pid $(cat "$run/$name.pid"))"; return; fi
  log "starting $name (log: $logs/argocd-$name.log)"
  setsid "$@" >>"$logs/argocd-$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
}

# wait_port NAME PORT: until something accepts on 127.0.0.1:PORT (the process must stay up)
wait_port() {
  local name=$1 port=$2 i
  for i in $(seq 1 120); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    running "$name" || { log "$name exited; see $logs/argocd-$name.log"; tail -20 "$logs/argocd-$name.log" >&2; exit 1; }
    sleep 0.5
  done
  log "$name does not listen on 127.0.0.1:$port after 60 s; see $logs/argocd-$name.log"; exit 1
}

# The module's own CRDs (manifests/crds) from the Go module cache.
module_dir() {
  (cd "$work" && GOTOOLCHAIN=$ARGOCD_GOTOOLCHAIN GOFLAGS=-mod=mod \
    go mod download -json github.com/argoproj/argo-cd/v3@"$ARGOCD_VERSION" |
    sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
}

# publish: the chart, the kustomize install and the samples of this checkout as a commit on
# main of $state/git/kustos.git (served as git://127.0.0.1:$ARGOCD_GIT_PORT/kustos.git)
cmd_publish() {
  local bare=$state/git/kustos.git tree=$state/git-work
  [ -d "$bare" ] || git init -q --bare -b main "$bare"
  rm -rf "$tree" && mkdir -p "$tree/charts" "$tree/manifests"
  cp -r "$root/charts/kustos" "$tree/charts/"
  cp -r "$root/manifests/install" "$root/manifests/samples" "$tree/manifests/"
  git -C "$tree" init -q -b main
  git -C "$tree" -c user.name=kustos -c user.email=kustos@localhost add -A
  git -C "$tree" -c user.name=kustos -c user.email=kustos@localhost commit -q -m "kustos from $root" --allow-empty
  git -C "$tree" push -q --force "$bare" main
  log "published to git://127.0.0.1:$ARGOCD_GIT_PORT/kustos.git ($(git -C "$tree" rev-parse --short HEAD))"
}

cmd_start() {
  [ -x "$KUSTOS_BIN/argocd" ] || cmd_build

  log "namespace argocd, Argo CD's CRDs, argocd-cm (Kustos' health checks), the default project"
  kubectl create namespace argocd --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  local crds
  crds="$(module_dir)/manifests/crds"
  kubectl apply --server-side --field-manager=kustos-argocd --force-conflicts \
    -f "$crds/application-crd.yaml" -f "$crds/applicationset-crd.yaml" -f "$crds/appproject-crd.yaml" >/dev/null
  # (kubectl wait errs rather than waits while a new CRD has no conditions at all)
  local i
  for i in $(seq 1 60); do
    kubectl wait --for=condition=Established crd/applications.argoproj.io crd/appprojects.argoproj.io \
      --timeout=30s >/dev/null 2>&1 && break
    [ "$i" = 60 ] && { log "Argo CD's CRDs not Established"; exit 1; }
    sleep 0.5
  done
  kubectl apply --server-side --field-manager=kustos-argocd --force-conflicts \
    -f "$root/manifests/argocd/argocd-cm.yaml" -f "$root/manifests/argocd/local/argocd.yaml" >/dev/null

  start_servers
  start_controller
}

# redis, the git daemon and the repo-server: nothing of these talks to the cluster
start_servers() {
  [ -x "$KUSTOS_BIN/argocd" ] && [ -x "$KUSTOS_BIN/git-verify-wrapper.sh" ] || cmd_build
  command -v redis-server >/dev/null || { log "redis-server missing: bash hack/host-packages.sh argocd"; exit 1; }
  mkdir -p "$run" "$logs" "$state/git" "$state/repo-server/tmp" "$state/config/ssh" "$state/config/tls" "$state/config/gpg"
  touch "$state/config/ssh/ssh_known_hosts"
  [ -d "$state/git/kustos.git" ] || cmd_publish

  spawn redis redis-server --bind 127.0.0.1 --port "$ARGOCD_REDIS_PORT" --save '' --appendonly no \
    --protected-mode yes --dir "$state"
  wait_port redis "$ARGOCD_REDIS_PORT"

  spawn git git daemon --reuseaddr --listen=127.0.0.1 --port="$ARGOCD_GIT_PORT" \
    --base-path="$state/git" --export-all "$state/git"
  wait_port git "$ARGOCD_GIT_PORT"

  # the repo-server runs git, helm and kustomize from PATH; the askpass helper is `argocd`
  spawn repo-server env PATH="$KUSTOS_BIN:$PATH" TMPDIR="$state/repo-server/tmp" \
    ARGOCD_GPG_ENABLED=false ARGOCD_SSH_DATA_PATH="$state/config/ssh" ARGOCD_TLS_DATA_PATH="$state/config/tls" \
    ARGOCD_GNUPGHOME="$state/config/gpg" ARGOCD_ASK_PASS_SOCK="$state/repo-server/ask-pass.sock" \
    "$KUSTOS_BIN/argocd-repo-server" --address 127.0.0.1 --port "$ARGOCD_REPO_PORT" \
      --metrics-address 127.0.0.1 --metrics-port "$ARGOCD_REPO_METRICS_PORT" --disable-tls --client-ca-path "" \
      --redis "127.0.0.1:$ARGOCD_REDIS_PORT" --logformat text
  wait_port repo-server "$ARGOCD_REPO_PORT"
}

start_controller() {
  # https://kubernetes.default.svc (the in-cluster destination) is $KUBECONFIG's cluster
  # with ARGOCD_FAKE_IN_CLUSTER; one controller, shard 0. --persist-resource-health: each
  # resource's health in the Application's .status.resources (Argo CD 3 keeps it in redis
  # for the API server otherwise, which does not run here). Its metrics listener binds
  # 0.0.0.0 (not configurable upstream).
  spawn application-controller env ARGOCD_FAKE_IN_CLUSTER=true KUBECONFIG="$KUBECONFIG" \
    ARGOCD_CONTROLLER_REPLICAS=1 ARGOCD_CONTROLLER_SHARD=0 \
    "$KUSTOS_BIN/argocd-application-controller" --namespace argocd \
      --redis "127.0.0.1:$ARGOCD_REDIS_PORT" --repo-server "127.0.0.1:$ARGOCD_REPO_PORT" \
      --repo-server-plaintext --metrics-port "$ARGOCD_CONTROLLER_METRICS_PORT" \
      --app-resync "${ARGOCD_APP_RESYNC:-60}" --persist-resource-health --logformat text
  wait_port application-controller "$ARGOCD_CONTROLLER_METRICS_PORT"
  log "Argo CD runs: git://127.0.0.1:$ARGOCD_GIT_PORT/kustos.git, repo-server 127.0.0.1:$ARGOCD_REPO_PORT"
}

cmd_stop() {
  local name pid
  for name in application-controller repo-server git redis; do
    running "$name" || { rm -f "$run/$name.pid"; continue; }
    pid=$(cat "$run/$name.pid")
    log "stopping $name (pid $pid)"
    kill -- "-$pid" 2>/dev/null || kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 -- "-$pid" 2>/dev/null
    rm -f "$run/$name.pid"
  done
}

case ${1:-} in
  build) cmd_build ;;
  start) cmd_start ;;
  start-servers) start_servers ;;
  stop) cmd_stop ;;
  publish) mkdir -p "$state/git"; cmd_publish ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
