#!/usr/bin/env bash
# Apache Kafka for the payload-log tests: the broker's jars from Maven Central, run by the
# tests themselves (tests/integration/kafka_broker.py formats a KRaft log dir in a tmp dir,
# starts one combined broker+controller on 127.0.0.1 and kills it at teardown).
#
#   hack/kafka.sh build    resolve kafka_2.13 $KAFKA_VERSION, the tools (StorageTool,
#                          TopicCommand, ConsoleConsumer) and a log4j2 backend with Maven
#                          (hack/kafka/pom.xml) into the cache (idempotent)
#   hack/kafka.sh path     where the jars are (java -cp "$(hack/kafka.sh path)/*" kafka.Kafka ...)
#
# No ZooKeeper, no daemon: nothing to start or stop here. Needs java (17+) and mvn.
#
# Environment (defaults in brackets):
#   KAFKA_VERSION [hack/versions.sh]  KAFKA_MAVEN_REPO [Maven's own, ~/.m2/repository]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.sh
. "$here/versions.sh"

POM=$here/kafka/pom.xml
KAFKA_HOME=$KUSTOS_CACHE/$K8S_VERSION/kafka-$KAFKA_VERSION
JARS=$KAFKA_HOME/jars

log() { printf '[kafka %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# what the jars were resolved from: the version and the pom (a changed pom rebuilds)
stamp() { printf '%s %s\n' "$KAFKA_VERSION" "$(sha256sum <"$POM" | cut -d' ' -f1)"; }

cmd_build() {
  if [ -f "$KAFKA_HOME/.stamp" ] && [ "$(cat "$KAFKA_HOME/.stamp")" = "$(stamp)" ] &&
     [ -f "$JARS/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    log "kafka $KAFKA_VERSION cached in $JARS"
    return
  fi
  command -v java >/dev/null || die "java (17+) is needed to run the broker"
  command -v mvn >/dev/null || die "mvn is needed to resolve the jars from Maven Central"
  log "resolving kafka $KAFKA_VERSION from Maven Central into $JARS"
  local t0=$SECONDS tmp=$KAFKA_HOME.tmp args=()
  [ -n "${KAFKA_MAVEN_REPO:-}" ] && args+=("-Dmaven.repo.local=$KAFKA_MAVEN_REPO")
  rm -rf "$tmp" && mkdir -p "$tmp"
  # runtime scope: what kafka.Kafka loads (the server modules are runtime dependencies of
  # kafka_2.13), not test or provided jars
  mvn -q -B -f "$POM" "${args[@]}" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/jars" ||
    die "mvn could not resolve kafka $KAFKA_VERSION (see above)"
  [ -f "$tmp/jars/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar not resolved"
  stamp >"$tmp/.stamp"
  # swapped in whole: a failed run leaves the previous jars (or none), never a mix
  rm -rf "$KAFKA_HOME" && mv "$tmp" "$KAFKA_HOME"
  log "kafka $KAFKA_VERSION: $(find "$JARS" -name '*.jar' | wc -l) jars, $(du -sh "$JARS" | cut -f1) in $((SECONDS - t0)) s"
}

case ${1:-} in
  build) cmd_build ;;
  path) printf '%s\n' "$JARS" ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
