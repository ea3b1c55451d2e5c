#!/usr/bin/env bash
# Runs the operator in the background for `make dev`: start (no-op when running) | stop.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log="$root/.cluster/logs/operator.log"
pidfile="$root/.cluster/run/operator.pid"
mkdir -p "$(dirname "$log")" "$(dirname "$pidfile")"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-start}" in
  start)
    if running; then echo "==> operator already running (pid $(cat "$pidfile"))"; exit 0; fi
    echo "==> operator (log: $log)"
    nohup "$root/.venv/bin/kustos" run --all-namespaces --metrics-bind 127.0.0.1 \
      --metrics-port "${KUSTOS_METRICS_PORT:-18080}" \
      --liveness "http://127.0.0.1:${KUSTOS_LIVENESS_PORT:-18081}/healthz" >>"$log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 60); do
      curl -fsS "http://127.0.0.1:${KUSTOS_LIVENESS_PORT:-18081}/healthz" >/dev/null 2>&1 && exit 0
      running || { echo "operator exited; see $log" >&2; tail -20 "$log" >&2; exit 1; }
      sleep 1
    done
    echo "operator not live after 60 s; see $log" >&2; exit 1 ;;
  stop)
    if running; then kill "$(cat "$pidfile")"; sleep 1; fi
    rm -f "$pidfile" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
