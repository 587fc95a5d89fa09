#!/usr/bin/env bash
# Real services for the integration tests, on loopback, non-default ports:
#   Kafka 4.x (KRaft, single node, jars from Maven Central), etcd (Debian),
#   PostgreSQL 15 + pgvector (Debian; pgvector built from Debian's source
#   package), Redis (Debian).
#
# Usage: deploy/services.sh up|down|status|env|clean [kafka|etcd|postgres|redis ...]
#   up      install what is missing, start what is not running, wait until
#           every service answers a real request (bounded), exit non-zero if
#           any does not.
#   down    stop what `up` started (pid files under the state dir).
#   status  one line per service; exit 0 only if all asked for are ready.
#   env     print the export lines the tests read: eval "$(deploy/services.sh env)"
#   clean   down, then delete the services' data and logs (not the installs).
#
# Settings (environment):
#   LAG_SERVICES_DIR    state dir: data, logs, pid files  (/var/tmp/lag-services)
#   LAG_SERVICES_CACHE  downloaded jars and sources        (/var/cache/lag-services)
#   LAG_SERVICES_TIMEOUT seconds to wait for each service  (120)
#   LAG_KAFKA_PORT 19092, LAG_KAFKA_CONTROLLER_PORT 19093, LAG_ETCD_PORT 12379,
#   LAG_ETCD_PEER_PORT 12380, LAG_PG_PORT 15432, LAG_REDIS_PORT 16379
#   LAG_KAFKA_HEAP (-Xms256m -Xmx1g)
#   LAG_SERVICES_NO_INSTALL=1  never install; fail if something is missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RES="$HERE/services"

STATE="${LAG_SERVICES_DIR:-/var/tmp/lag-services}"
CACHE="${LAG_SERVICES_CACHE:-/var/cache/lag-services}"
TIMEOUT="${LAG_SERVICES_TIMEOUT:-120}"

KAFKA_VERSION=4.1.1
KAFKA_PORT="${LAG_KAFKA_PORT:-19092}"
KAFKA_CTRL_PORT="${LAG_KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP="${LAG_KAFKA_HEAP:--Xms256m -Xmx1g}"
ETCD_PORT="${LAG_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${LAG_ETCD_PEER_PORT:-12380}"
PG_PORT="${LAG_PG_PORT:-15432}"
PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PG_DB=lag
PG_USER=lag
PG_PASSWORD=lag
REDIS_PORT="${LAG_REDIS_PORT:-16379}"
PGVECTOR_WANT=0.8.0

KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
ALL_SERVICES=(etcd redis postgres kafka)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log()  { printf '[services %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '[services %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pidfile() { echo "$STATE/run/$1.pid"; }

# pid of a service we started, if it is still alive (stale pid files ignored).
live_pid() {
  local f; f="$(pidfile "$1")"
  [ -s "$f" ] || return 1
  local pid; pid="$(head -n1 "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # the pid must still be the program we started (pids are reused)
  grep -qa -- "$2" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

# last lines of a service's logs, for error messages
log_tail() {
  local f
  for f in "$STATE/logs/$1.log" "$STATE/logs/$1/server.log"; do
    [ -s "$f" ] && { echo "--- $f"; tail -n 25 "$f"; }
  done
  return 0
}

# wait_for NAME CHECK_FUNCTION [PIDNAME PATTERN]: poll until the check passes,
# the process dies, or TIMEOUT seconds pass.
wait_for() {
  local name="$1" check="$2" pidname="${3:-}" start=$SECONDS
  while ! "$check" >/dev/null 2>&1; do
    if [ -n "$pidname" ] && ! live_pid "$pidname" "${4:-}" >/dev/null; then
      die "$name exited during start-up; last log lines:
$(log_tail "${name%% *}")"
    fi
    if (( SECONDS - start >= TIMEOUT )); then
      die "$name not ready after ${TIMEOUT}s; last log lines:
$(log_tail "${name%% *}")"
    fi
    sleep 1
  done
  log "$name ready ($(( SECONDS - start ))s)"
}

ensure_port_free() { # NAME PORT
  if port_open "$2"; then
    die "port $2 wanted by $1 is already in use by another process (set LAG_${1^^}_PORT or stop it)"
  fi
}

stop_pid() { # NAME PATTERN [SECONDS]
  local pid
  pid="$(live_pid "$1" "$2")" || { rm -f "$(pidfile "$1")"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < ${3:-30} * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$1 (pid $pid) did not stop in ${3:-30}s, killing"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$1")"
  log "$1 stopped"
}

# ---------------------------------------------------------------- install

# Wait for another apt/dpkg run (a colleague's install) instead of failing.
APT_LOCK=(-o DPkg::Lock::Timeout=600)
APT_UPDATED=0
apt_update() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    $SUDO apt-get "${APT_LOCK[@]}" update -q >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
}

missing_debs() {
  local p out=()
  for p in "$@"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || out+=("$p")
  done
  echo "${out[*]:-}"
}

# Install Debian packages without letting their maintainer scripts start the
# system instances (we run our own on other ports; there may be no systemd).
apt_install() {
  local need; need="$(missing_debs "$@")"
  [ -n "$need" ] || return 0
  [ "${LAG_SERVICES_NO_INSTALL:-0}" = 1 ] && die "missing packages: $need (LAG_SERVICES_NO_INSTALL=1)"
  apt_update
  log "apt-get install $need"
  local prc=/usr/sbin/policy-rc.d ours=0
  if [ ! -e "$prc" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$prc" >/dev/null
    $SUDO chmod 755 "$prc"
    ours=1
  fi
  # shellcheck disable=SC2086
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "${APT_LOCK[@]}" install -y -q --no-install-recommends $need >"$STATE/logs/apt.log" 2>&1; then
    [ "$ours" = 1 ] && $SUDO rm -f "$prc"
    die "apt-get install $need failed; see $STATE/logs/apt.log:
$(tail -n 20 "$STATE/logs/apt.log")"
  fi
  [ "$ours" = 1 ] && $SUDO rm -f "$prc"
  return 0
}

java_ok() {
  command -v java >/dev/null || return 1
  local v; v="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
  [ -n "$v" ] && [ "${v%%.*}" -ge 17 ]
}

# The rdkafka crate builds librdkafka from source (`cmake-build`; Debian's librdkafka-dev is
# too old): cmake, a C/C++ toolchain and zlib headers. Installed with Kafka because .ci/run
# brings Kafka up before it builds.
install_rdkafka_build_deps() {
  local need=()
  command -v cmake >/dev/null || need+=(cmake)
  command -v cc >/dev/null || need+=(gcc)
  command -v c++ >/dev/null || need+=(g++)
  command -v make >/dev/null || need+=(make)
  command -v pkg-config >/dev/null || need+=(pkg-config)
  [ -n "$(missing_debs zlib1g-dev)" ] && need+=(zlib1g-dev)
  [ "${#need[@]}" -eq 0 ] || apt_install "${need[@]}"
}

install_kafka() {
  install_rdkafka_build_deps
  if ! java_ok; then apt_install openjdk-17-jre-headless; fi
  java_ok || die "Kafka $KAFKA_VERSION needs Java 17 or newer on PATH"
  if [ -f "$KAFKA_LIBS/.complete" ] && [ "$(cat "$KAFKA_LIBS/.complete")" = "$(cksum <"$RES/kafka/pom.xml")" ]; then
    return 0
  fi
  [ "${LAG_SERVICES_NO_INSTALL:-0}" = 1 ] && die "Kafka jars missing in $KAFKA_LIBS (LAG_SERVICES_NO_INSTALL=1)"
  command -v mvn >/dev/null || apt_install maven
  log "resolving Kafka $KAFKA_VERSION jars with Maven into $KAFKA_LIBS"
  $SUDO mkdir -p "$CACHE" && $SUDO chown "$(id -u):$(id -g)" "$CACHE"
  rm -rf "$KAFKA_LIBS.tmp"
  if ! mvn -B -q -f "$RES/kafka/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$KAFKA_LIBS.tmp" >"$STATE/logs/maven.log" 2>&1; then
    die "Maven could not resolve the Kafka jars; see $STATE/logs/maven.log:
$(tail -n 20 "$STATE/logs/maven.log")"
  fi
  cksum <"$RES/kafka/pom.xml" >"$KAFKA_LIBS.tmp/.complete"
  rm -rf "$KAFKA_LIBS" && mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
}

# protobuf-compiler: not a service, but the etcd-client crate's build script needs `protoc`
# to compile etcd's .proto files, so CI (which runs `up` before building) gets it here too.
# libprotobuf-dev: Debian's protoc ships without the well-known types etcd's protos import
# (google/protobuf/descriptor.proto); without it the build fails on a fresh machine.
install_etcd()  { apt_install etcd-server etcd-client protobuf-compiler libprotobuf-dev; }
install_redis() { apt_install redis-server redis-tools; }

pg_sharedir() { echo "/usr/share/postgresql/$PG_MAJOR"; }
pgvector_installed() {
  [ -f "/usr/lib/postgresql/$PG_MAJOR/lib/vector.so" ] &&
    [ -f "$(pg_sharedir)/extension/vector.control" ]
}

# The mirror this machine already uses for Debian (deb822 or one-line format).
debian_mirror() {
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$m" ]; then
    m="$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
         awk '{for (i=2;i<=NF;i++) if ($i ~ /^https?:/ && $i !~ /security/) {print $i; exit}}' | head -n1)"
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

# pgvector: bookworm has no package for PG 15 at the version we want, so build
# Debian's trixie *source* package. Only a deb-src line is added (binary
# packages still come from bookworm alone) and it is removed again afterwards.
install_pgvector() {
  pgvector_installed && return 0
  [ "${LAG_SERVICES_NO_INSTALL:-0}" = 1 ] && die "pgvector missing (LAG_SERVICES_NO_INSTALL=1)"
  apt_install "postgresql-server-dev-$PG_MAJOR" build-essential dpkg-dev
  local src="$CACHE/pgvector"
  $SUDO mkdir -p "$CACHE" && $SUDO chown "$(id -u):$(id -g)" "$CACHE"
  mkdir -p "$src"
  local dir; dir="$(find "$src" -maxdepth 1 -type d -name 'pgvector-*' | sort | tail -n1)"
  if [ -z "$dir" ]; then
    local list=/etc/apt/sources.list.d/lag-pgvector-src.sources
    log "fetching Debian source package pgvector (trixie deb-src)"
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$(debian_mirror)" | $SUDO tee "$list" >/dev/null
    local ok=1
    $SUDO apt-get "${APT_LOCK[@]}" update -q >"$STATE/logs/apt-src.log" 2>&1 || ok=0
    if [ "$ok" = 1 ]; then
      (cd "$src" && apt-get source -q pgvector >>"$STATE/logs/apt-src.log" 2>&1) || ok=0
    fi
    $SUDO rm -f "$list"
    $SUDO apt-get "${APT_LOCK[@]}" update -q >/dev/null 2>&1 || true   # drop the trixie source index again
    [ "$ok" = 1 ] || die "apt-get source pgvector failed; see $STATE/logs/apt-src.log:
$(tail -n 20 "$STATE/logs/apt-src.log")"
    dir="$(find "$src" -maxdepth 1 -type d -name 'pgvector-*' | sort | tail -n1)"
    [ -n "$dir" ] || die "apt-get source pgvector produced no source tree in $src"
  fi
  [ "$(basename "$dir")" = "pgvector-$PGVECTOR_WANT" ] ||
    log "note: Debian's pgvector source is $(basename "$dir"), this script was tested with $PGVECTOR_WANT"
  log "building $(basename "$dir") against PostgreSQL $PG_MAJOR"
  # OPTFLAGS="" : no -march=native, so the build runs on any x86-64 machine.
  if ! (cd "$dir" && make clean >/dev/null 2>&1; make OPTFLAGS="" PG_CONFIG="$PG_BIN/pg_config" &&
        $SUDO make install OPTFLAGS="" PG_CONFIG="$PG_BIN/pg_config") >"$STATE/logs/pgvector-build.log" 2>&1; then
    die "pgvector build failed; see $STATE/logs/pgvector-build.log:
$(tail -n 20 "$STATE/logs/pgvector-build.log")"
  fi
  pgvector_installed || die "pgvector installed but vector.so/vector.control not found"
}

install_postgres() {
  apt_install "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR"
  install_pgvector
}

# ---------------------------------------------------------------- etcd

etcd_ctl() { ETCDCTL_API=3 etcdctl --endpoints="http://127.0.0.1:$ETCD_PORT" --command-timeout=3s "$@"; }
etcd_ready() { etcd_ctl endpoint health; }

up_etcd() {
  install_etcd
  if live_pid etcd /usr/bin/etcd >/dev/null && etcd_ready >/dev/null 2>&1; then
    log "etcd already running"; return 0
  fi
  live_pid etcd /usr/bin/etcd >/dev/null || { ensure_port_free etcd "$ETCD_PORT"; ensure_port_free etcd_peer "$ETCD_PEER_PORT"; }
  mkdir -p "$STATE/etcd"
  chmod 700 "$STATE/etcd"
  if ! live_pid etcd /usr/bin/etcd >/dev/null; then
    log "starting etcd on 127.0.0.1:$ETCD_PORT"
    nohup setsid /usr/bin/etcd --name lag-test \
      --data-dir "$STATE/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "lag-test=http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster-state new --initial-cluster-token lag-test \
      --auto-compaction-retention 1h \
      >>"$STATE/logs/etcd.log" 2>&1 </dev/null &
    echo $! >"$(pidfile etcd)"
  fi
  wait_for etcd etcd_ready etcd /usr/bin/etcd
}

down_etcd() { stop_pid etcd /usr/bin/etcd 20; }

# ---------------------------------------------------------------- redis

redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

up_redis() {
  install_redis
  if live_pid redis redis-server >/dev/null && redis_ready; then
    log "redis already running"; return 0
  fi
  if ! live_pid redis redis-server >/dev/null; then
    ensure_port_free redis "$REDIS_PORT"
    mkdir -p "$STATE/redis"
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    # No persistence: the cache and token buckets are disposable in tests.
    nohup setsid /usr/bin/redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
      --dir "$STATE/redis" --save "" --appendonly no --daemonize no \
      --protected-mode yes --logfile "" \
      >>"$STATE/logs/redis.log" 2>&1 </dev/null &
    echo $! >"$(pidfile redis)"
  fi
  wait_for redis redis_ready redis redis-server
}

down_redis() { stop_pid redis redis-server 20; }

# ---------------------------------------------------------------- postgres

PG_DATA="$STATE/postgres/data"
PG_SOCK="$STATE/postgres/run"
pg_user() { if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi; }
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_psql() { PGOPTIONS="-c client_min_messages=warning" as_pg "$PG_BIN/psql" -h "$PG_SOCK" -p "$PG_PORT" -U "$(pg_user)" -v ON_ERROR_STOP=1 -qAt "$@"; }
pg_ready() { as_pg "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
pg_running() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }

up_postgres() {
  install_postgres
  local u; u="$(pg_user)"
  mkdir -p "$STATE/postgres"
  if [ "$(id -u)" -eq 0 ]; then
    chown "$u:$u" "$STATE/postgres"
    touch "$STATE/logs/postgres.log"; chown "$u:$u" "$STATE/logs/postgres.log"
  fi
  as_pg mkdir -p "$PG_SOCK"
  if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    log "initdb $PG_DATA"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$u" --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$STATE/logs/initdb.log" 2>&1 ||
      { rm -rf "$PG_DATA"; die "initdb failed; see $STATE/logs/initdb.log:
$(tail -n 20 "$STATE/logs/initdb.log")"; }
  fi
  if pg_running && pg_ready; then
    log "postgres already running"
  else
    pg_running || ensure_port_free postgres "$PG_PORT"
    log "starting postgres $PG_MAJOR on 127.0.0.1:$PG_PORT"
    # pg_ctl -w waits until the server accepts connections (bounded by -t).
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$STATE/logs/postgres.log" -w -t "$TIMEOUT" \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_SOCK -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >/dev/null ||
      die "postgres did not start; last log lines:
$(tail -n 30 "$STATE/logs/postgres.log")"
    wait_for postgres pg_ready
  fi
  # Role, database and extension: idempotent. The extension is created in
  # template1 too, so databases the tests create have it already.
  pg_psql -d postgres <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
  pg_psql -d template1 -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null
  if [ "$(pg_psql -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
    pg_psql -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >/dev/null
  fi
  pg_psql -d "$PG_DB" -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null
  local v; v="$(pg_psql -d "$PG_DB" -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'")"
  log "postgres: database $PG_DB, user $PG_USER, pgvector $v"
}

down_postgres() {
  if [ -s "$PG_DATA/PG_VERSION" ] && pg_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null && log "postgres stopped"
  fi
}

# ---------------------------------------------------------------- kafka

KAFKA_DIR="$STATE/kafka"
KAFKA_MAIN=kafka.Kafka
kafka_java() { # run a Kafka tool class quietly
  java -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$RES/kafka/tools-log4j2.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}
kafka_topics() { kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@"; }
kafka_ready() { kafka_topics --list; }

kafka_config() {
  cat <<EOF
# generated by deploy/services.sh -- single node, combined broker + controller
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CTRL_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOF
}

up_kafka() {
  install_kafka
  if live_pid kafka "$KAFKA_MAIN" >/dev/null && port_open "$KAFKA_PORT"; then
    log "kafka already running"
  else
    if ! live_pid kafka "$KAFKA_MAIN" >/dev/null; then
      ensure_port_free kafka "$KAFKA_PORT"
      ensure_port_free kafka_controller "$KAFKA_CTRL_PORT"
      mkdir -p "$KAFKA_DIR/data"
      kafka_config >"$KAFKA_DIR/server.properties"
      if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
        local id; id="$(kafka_java kafka.tools.StorageTool random-uuid)"
        log "formatting Kafka storage (cluster id $id)"
        kafka_java kafka.tools.StorageTool format -t "$id" -c "$KAFKA_DIR/server.properties" \
          >"$STATE/logs/kafka-format.log" 2>&1 ||
          die "kafka storage format failed; see $STATE/logs/kafka-format.log:
$(tail -n 20 "$STATE/logs/kafka-format.log")"
      fi
      log "starting kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$KAFKA_PORT"
      # shellcheck disable=SC2086
      nohup setsid java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true \
        -Dkafka.logs.dir="$STATE/logs/kafka" \
        -Dlog4j2.configurationFile="$RES/kafka/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$KAFKA_MAIN" "$KAFKA_DIR/server.properties" \
        >>"$STATE/logs/kafka.log" 2>&1 </dev/null &
      echo $! >"$(pidfile kafka)"
    fi
  fi
  kafka_port_open() { port_open "$KAFKA_PORT"; }
  wait_for "kafka port" kafka_port_open kafka "$KAFKA_MAIN"
  wait_for kafka kafka_ready kafka "$KAFKA_MAIN"
  # Topics the product uses: the enforcer's Kafka sink writes gateway.* (events.kafka
  # topic_prefix, keyed by route); SEED: error-events has 6 partitions. The three record
  # topics need the same count: the pipeline's group assigns by range, so a route's errors,
  # samples and counts (same key, same partition number) reach the same replica.
  local have; have="$(kafka_topics --list 2>/dev/null)"
  local spec name parts
  for spec in gateway.error_events:6 gateway.traffic_samples:6 gateway.route_counts:6 \
              error-events:6 traffic-stats:3 policies:1; do
    name="${spec%%:*}"; parts="${spec##*:}"
    if ! grep -qx "$name" <<<"$have"; then
      kafka_topics --create --if-not-exists --topic "$name" --partitions "$parts" \
        --replication-factor 1 >/dev/null || die "could not create Kafka topic $name"
      log "kafka topic $name ($parts partitions) created"
    fi
  done
}

down_kafka() { stop_pid kafka "$KAFKA_MAIN" 60; }

# ---------------------------------------------------------------- commands

print_env() {
  cat <<EOF
export LAG_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export LAG_ETCD_ENDPOINTS=http://127.0.0.1:$ETCD_PORT
export LAG_PG_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
export LAG_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export LAG_SERVICES_DIR=$STATE
EOF
}

status_one() {
  case "$1" in
    etcd)     if live_pid etcd /usr/bin/etcd >/dev/null && etcd_ready >/dev/null 2>&1; then echo "etcd      ready    http://127.0.0.1:$ETCD_PORT (pid $(live_pid etcd /usr/bin/etcd))"; else echo "etcd      down"; return 1; fi ;;
    redis)    if live_pid redis redis-server >/dev/null && redis_ready; then echo "redis     ready    redis://127.0.0.1:$REDIS_PORT (pid $(live_pid redis redis-server))"; else echo "redis     down"; return 1; fi ;;
    postgres) if [ -s "$PG_DATA/PG_VERSION" ] && pg_running && pg_ready; then echo "postgres  ready    127.0.0.1:$PG_PORT/$PG_DB (pid $(head -n1 "$PG_DATA/postmaster.pid"))"; else echo "postgres  down"; return 1; fi ;;
    kafka)    if live_pid kafka "$KAFKA_MAIN" >/dev/null && port_open "$KAFKA_PORT"; then echo "kafka     ready    127.0.0.1:$KAFKA_PORT (pid $(live_pid kafka "$KAFKA_MAIN"))"; else echo "kafka     down"; return 1; fi ;;
  esac
}

main() {
  local cmd="${1:-}"; shift || true
  local svcs=("$@") s
  [ ${#svcs[@]} -gt 0 ] || svcs=("${ALL_SERVICES[@]}")
  for s in "${svcs[@]}"; do
    case "$s" in etcd|redis|postgres|kafka) ;; *) die "unknown service '$s' (etcd, redis, postgres, kafka)";; esac
  done
  case "$cmd" in
    up)
      mkdir -p "$STATE/logs" "$STATE/run" "$STATE/logs/kafka"
      chmod 755 "$STATE"
      local t0=$SECONDS
      for s in "${svcs[@]}"; do "up_$s"; done
      log "all up in $(( SECONDS - t0 ))s: ${svcs[*]}"
      ;;
    down)
      # reverse order: kafka first, etcd last
      local i
      for ((i = ${#svcs[@]} - 1; i >= 0; i--)); do "down_${svcs[$i]}"; done
      ;;
    status)
      local rc=0
      for s in "${svcs[@]}"; do status_one "$s" || rc=3; done
      return $rc
      ;;
    env) print_env ;;
    clean)
      # stop, then delete data and logs (installed packages and cached jars stay)
      local i
      for ((i = ${#svcs[@]} - 1; i >= 0; i--)); do "down_${svcs[$i]}"; done
      for s in "${svcs[@]}"; do
        case "$s" in
          kafka) rm -rf "$KAFKA_DIR" "$STATE/logs/kafka" "$STATE/logs/kafka"*.log ;;
          *) rm -rf "${STATE:?}/$s" "$STATE/logs/$s.log" ;;
        esac
      done
      log "removed data of: ${svcs[*]}"
      ;;
    *) echo "usage: $0 up|down|status|env|clean [etcd|redis|postgres|kafka ...]" >&2; return 2 ;;
  esac
}

main "$@"
