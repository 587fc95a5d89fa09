#!/usr/bin/env bash
# Enforcer overhead, three ways in one run against the same tiny local upstream:
#   direct  → upstream
#   nginx   → upstream  (plain reverse proxy, keep-alive pool)
#   enforcer→ upstream  (release build, 50 inactive policies loaded on the route)
#   enforcer_kafka → upstream (the same, with `events.sink: kafka`), when LAG_KAFKA_BROKERS is
#                       set (`eval "$(deploy/services.sh env)"`): the distributed mode's cost;
#                       with --kafka-linger "5 100", one such path per producer linger.ms
# Fixed rate (oha -q, open loop at 1,000 req/s) gives p50/p95/p99 latency; saturation (wrk)
# gives maximum requests per second, measured in --rounds rounds that visit every path in turn
# (the median is reported, and each round's ratios, since one run on two shared cores is noisy).
# Only 127.0.0.1 is ever targeted.
#
# Usage: deploy/bench/overhead.sh [--rate 1000] [--duration 20] [--connections 64] [--rounds 3]
#                                 [--kafka-linger "MS ..."]
# Installs wrk and nginx (Debian) and oha (crates.io) when missing.
set -euo pipefail

RATE=1000
DURATION=20
CONNS=64
ROUNDS=3
LINGERS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kafka-linger) LINGERS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNS="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$(mktemp -d /tmp/lag-overhead.XXXXXX)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lag-target/ci}"
UP_PORT=18181 NGINX_PORT=18182 GW_PORT=18183 ADMIN_PORT=18184
declare -A PORT=([direct]=$UP_PORT [nginx]=$NGINX_PORT [enforcer]=$GW_PORT)
declare -A LINGER=()
PATHS="direct nginx enforcer"
KAFKA_PATHS=""
if [ -n "${LAG_KAFKA_BROKERS:-}" ]; then
  if [ -z "$LINGERS" ]; then
    KAFKA_PATHS="enforcer_kafka"
  else
    for ms in $LINGERS; do KAFKA_PATHS="$KAFKA_PATHS enforcer_kafka_${ms}ms"; LINGER[enforcer_kafka_${ms}ms]=$ms; done
  fi
  port=18185
  for name in $KAFKA_PATHS; do PORT[$name]=$port; port=$((port + 2)); done
  PATHS="$PATHS $KAFKA_PATHS"
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null
fi
if ! need oha; then
  cargo install --locked oha --version 1.16.0 >/dev/null
fi

cargo build --release -q -p enforcer --manifest-path "$ROOT/Cargo.toml"
BIN="$CARGO_TARGET_DIR/release/enforcer"

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; return 1
}

# The upstream: the enforcer's demo upstream (hyper), answering GET / with a small JSON body.
"$BIN" demo-upstream --listen "127.0.0.1:$UP_PORT" 2>"$WORK/upstream.log" &
pids+=($!)
wait_port "$UP_PORT"

cat >"$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK"
wait_port "$NGINX_PORT"

# 50 inactive policies on the route: slices of tenants that never send traffic.
python3 - "$WORK/policies.json" <<'EOF'
import json, sys, time
now = int(time.time() * 1000)
policies = [{
    "id": f"inactive-{i}", "cluster_id": f"c{i}",
    "slice": {"any": [{"route": "bench", "all": [{"key": "header:x-tenant", "value": f"tenant-{i}"}]}]},
    "action": {"type": "circuit_break", "open_ms": 30000, "ramp_step": 0.2, "probes": 5, "failure_ratio": 0.5},
    "signature": [i], "severity": 0.9, "created_at_ms": now, "expires_at_ms": now + 3_600_000,
} for i in range(50)]
json.dump({"version": 1, "issued_at_ms": now, "policies": policies}, open(sys.argv[1], "w"))
EOF
cat >"$WORK/enforcer.yaml" <<EOF
listen: 127.0.0.1:$GW_PORT
admin_listen: 127.0.0.1:$ADMIN_PORT
routes:
  - name: bench
    upstreams: ["http://127.0.0.1:$UP_PORT"]
    dimensions: { headers: [x-tenant] }
events: { sink: discard }
policies: { source: file, file: $WORK/policies.json }
EOF
RUST_LOG=warn "$BIN" run --config "$WORK/enforcer.yaml" 2>"$WORK/enforcer.log" &
pids+=($!)
wait_port "$GW_PORT"
for _ in $(seq 1 50); do
  curl -fsS "127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^enforcer_policies_live 50' && break
  sleep 0.1
done
curl -fsS "127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^enforcer_policies_live 50' || { echo "policies not loaded" >&2; exit 1; }

for name in $KAFKA_PATHS; do
  gwk=${PORT[$name]} admink=$((PORT[$name] + 1))
  linger=""
  [ -n "${LINGER[$name]:-}" ] && linger=", linger_ms: ${LINGER[$name]}"
  sed -e "s/127.0.0.1:$GW_PORT/127.0.0.1:$gwk/; s/127.0.0.1:$ADMIN_PORT/127.0.0.1:$admink/" \
      -e "s|events: { sink: discard }|events: { sink: kafka, kafka: { brokers: \"$LAG_KAFKA_BROKERS\", topic_prefix: \"bench.\"$linger } }|" \
      "$WORK/enforcer.yaml" >"$WORK/$name.yaml"
  RUST_LOG=warn "$BIN" run --config "$WORK/$name.yaml" 2>"$WORK/$name.log" &
  pids+=($!)
  wait_port "$gwk"
  for _ in $(seq 1 50); do
    curl -fsS "127.0.0.1:$admink/metrics" | grep -q '^enforcer_policies_live 50' && break
    sleep 0.1
  done
done

# Warm every path's connection pools.
port_of() { echo "${PORT[$1]}"; }
for name in $PATHS; do port=$(port_of "$name"); wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null; done

fixed() { # port → "p50 p95 p99" in ms
  oha --no-tui --output-format json --latency-correction -q "$RATE" -c "$CONNS" -z "${DURATION}s" "http://127.0.0.1:$1/" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; s=d["summary"]; print("%.3f %.3f %.3f %.1f" % (p["p50"]*1e3, p["p95"]*1e3, p["p99"]*1e3, s["requestsPerSec"]))'
}
saturate() { # port → requests/s
  wrk -t2 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$1/" | awk '/Requests\/sec/ {print $2}'
}

declare -A P50 P95 P99 RPS ACH ROUND
for name in $PATHS; do
  port=$(port_of "$name")
  read -r P50[$name] P95[$name] P99[$name] ACH[$name] < <(fixed "$port")
done
for r in $(seq 1 "$ROUNDS"); do
  for name in $PATHS; do
    ROUND[$name]="${ROUND[$name]:-} $(saturate "$(port_of "$name")")"
  done
done
median() { python3 -c 'import statistics,sys; print("%.2f" % statistics.median(map(float, sys.argv[1:])))' "$@"; }
for name in $PATHS; do
  # shellcheck disable=SC2086 # one word per round
  RPS[$name]=$(median ${ROUND[$name]})
done

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); rate $RATE req/s for ${DURATION}s, $CONNS connections"
printf '| path | p50 ms | p95 ms | p99 ms | added p50 ms | added p95 ms | added p99 ms | achieved req/s at fixed rate | max req/s (wrk) |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for name in $PATHS; do
  add() { python3 -c "print('%.3f' % ($1 - $2))"; }
  if [ "$name" = direct ]; then a50=-; a95=-; a99=-; else
    a50=$(add "${P50[$name]}" "${P50[direct]}"); a95=$(add "${P95[$name]}" "${P95[direct]}"); a99=$(add "${P99[$name]}" "${P99[direct]}"); fi
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "${P50[$name]}" "${P95[$name]}" "${P99[$name]}" "$a50" "$a95" "$a99" "${ACH[$name]}" "${RPS[$name]}"
done
echo
echo "max req/s (wrk) per round, $ROUNDS rounds of ${DURATION}s visiting the paths in turn:"
for name in $PATHS; do echo "  $name:${ROUND[$name]}"; done
ratios() { # a b → per-round a/b and the median
  python3 -c 'import statistics,sys; a,b=(list(map(float,x.split())) for x in sys.argv[1:3]); r=[x/y for x,y in zip(a,b)]; print(" ".join("%.2f" % v for v in r), "(median %.2f)" % statistics.median(r))' "${ROUND[$1]}" "${ROUND[$2]}"
}
echo "  enforcer / nginx per round: $(ratios enforcer nginx)"
for name in $KAFKA_PATHS; do
  echo "  $name / enforcer per round: $(ratios "$name" enforcer)"
done
