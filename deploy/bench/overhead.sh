#!/usr/bin/env bash
# Enforcer overhead, three ways in one run against the same tiny local upstream:
#   direct  → upstream
#   nginx   → upstream  (plain reverse proxy, keep-alive pool)
#   enforcer→ upstream  (release build, 50 inactive policies loaded on the route)
#   enforcer_kafka → upstream (the same, with `events.sink: kafka`), when LAG_KAFKA_BROKERS is
#                       set (`eval "$(deploy/services.sh env)"`): the distributed mode's cost
# Fixed rate (oha -q, open loop at 1,000 req/s) gives p50/p95/p99 latency; saturation (wrk)
# gives maximum requests per second. Only 127.0.0.1 is ever targeted.
#
# Usage: deploy/bench/overhead.sh [--rate 1000] [--duration 20] [--connections 64]
# Installs wrk and nginx (Debian) and oha (crates.io) when missing.
set -euo pipefail

RATE=1000
DURATION=20
CONNS=64
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNS="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$(mktemp -d /tmp/lag-overhead.XXXXXX)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lag-target/ci}"
UP_PORT=18181 NGINX_PORT=18182 GW_PORT=18183 ADMIN_PORT=18184 GWK_PORT=18185 ADMINK_PORT=18186
PATHS="direct nginx enforcer"
[ -n "${LAG_KAFKA_BROKERS:-}" ] && PATHS="$PATHS enforcer_kafka"

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

if [ -n "${LAG_KAFKA_BROKERS:-}" ]; then
  sed -e "s/127.0.0.1:$GW_PORT/127.0.0.1:$GWK_PORT/; s/127.0.0.1:$ADMIN_PORT/127.0.0.1:$ADMINK_PORT/" \
      -e "s|events: { sink: discard }|events: { sink: kafka, kafka: { brokers: \"$LAG_KAFKA_BROKERS\", topic_prefix: \"bench.\" } }|" \
      "$WORK/enforcer.yaml" >"$WORK/enforcer-kafka.yaml"
  RUST_LOG=warn "$BIN" run --config "$WORK/enforcer-kafka.yaml" 2>"$WORK/enforcer-kafka.log" &
  pids+=($!)
  wait_port "$GWK_PORT"
  for _ in $(seq 1 50); do
    curl -fsS "127.0.0.1:$ADMINK_PORT/metrics" | grep -q '^enforcer_policies_live 50' && break
    sleep 0.1
  done
fi

# Warm every path's connection pools.
port_of() { case $1 in direct) echo $UP_PORT ;; nginx) echo $NGINX_PORT ;; enforcer) echo $GW_PORT ;; enforcer_kafka) echo $GWK_PORT ;; esac; }
for name in $PATHS; do port=$(port_of "$name"); wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null; done

fixed() { # port → "p50 p95 p99" in ms
  oha --no-tui --output-format json --latency-correction -q "$RATE" -c "$CONNS" -z "${DURATION}s" "http://127.0.0.1:$1/" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; s=d["summary"]; print("%.3f %.3f %.3f %.1f" % (p["p50"]*1e3, p["p95"]*1e3, p["p99"]*1e3, s["requestsPerSec"]))'
}
saturate() { # port → requests/s
  wrk -t2 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$1/" | awk '/Requests\/sec/ {print $2}'
}

declare -A P50 P95 P99 RPS ACH
for name in $PATHS; do
  port=$(port_of "$name")
  read -r P50[$name] P95[$name] P99[$name] ACH[$name] < <(fixed "$port")
  RPS[$name]=$(saturate "$port")
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
