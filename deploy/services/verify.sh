#!/usr/bin/env bash
# Proves each service started by deploy/services.sh answers a real client:
#   kafka    console producer -> console consumer round trip (own topic)
#   etcd     etcdctl put / get / del
#   postgres psql over TCP with the test user's password: pgvector + HNSW index
#   redis    redis-cli ping, set / get
# Leaves no data behind. Exit non-zero on the
# first failure. Usage: deploy/services/verify.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
eval "$("$HERE/../services.sh" env)"
CACHE="${LAG_SERVICES_CACHE:-/var/cache/lag-services}"
LIBS="$(ls -d "$CACHE"/kafka-*/libs | tail -n1)"
fail() { echo "verify: FAIL: $*" >&2; exit 1; }
kjava() {
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$HERE/kafka/tools-log4j2.properties" -cp "$LIBS/*" "$@"
}

# --- kafka (a topic of its own, deleted afterwards)
msg="selfcheck-$(date +%s)-$$"
topic="lag-selfcheck-$$"
kjava org.apache.kafka.tools.TopicCommand --bootstrap-server "$LAG_KAFKA_BROKERS" \
  --create --topic "$topic" --partitions 1 --replication-factor 1 >/dev/null || fail "kafka create topic"
printf 'route-a:%s\n' "$msg" | kjava org.apache.kafka.tools.ConsoleProducer \
  --bootstrap-server "$LAG_KAFKA_BROKERS" --topic "$topic" \
  --property parse.key=true --property key.separator=: \
  || fail "kafka produce"
got="$(kjava org.apache.kafka.tools.consumer.ConsoleConsumer \
  --bootstrap-server "$LAG_KAFKA_BROKERS" --topic "$topic" --from-beginning \
  --property print.key=true --property key.separator=: \
  --timeout-ms 30000 --max-messages 1 2>/dev/null || true)"
kjava org.apache.kafka.tools.TopicCommand --bootstrap-server "$LAG_KAFKA_BROKERS" --delete --topic "$topic" >/dev/null || true
[ "$got" = "route-a:$msg" ] || fail "kafka consume: got '$got'"
echo "kafka    ok: produced and consumed '$got' (topic $topic, deleted)"
topics="$(kjava org.apache.kafka.tools.TopicCommand --bootstrap-server "$LAG_KAFKA_BROKERS" --describe --topic error-events \
  | awk '/PartitionCount/ {for (i=1;i<=NF;i++) if ($i=="PartitionCount:") print $(i+1)}')"
[ "$topics" = 6 ] || fail "error-events has '$topics' partitions, want 6"
echo "kafka    ok: error-events has 6 partitions"

# --- etcd
export ETCDCTL_API=3
E=(etcdctl --endpoints="$LAG_ETCD_ENDPOINTS")
"${E[@]}" put /lag-selfcheck/key "$msg" >/dev/null || fail "etcd put"
got="$("${E[@]}" get --print-value-only /lag-selfcheck/key)"
[ "$got" = "$msg" ] || fail "etcd get: got '$got'"
"${E[@]}" del /lag-selfcheck/key >/dev/null
echo "etcd     ok: put/get/del, $("${E[@]}" endpoint status -w simple | cut -d, -f3 | tr -d ' ') server"

# --- postgres + pgvector (over TCP, password auth, as the test user)
out="$(PGOPTIONS="-c client_min_messages=warning" psql "$LAG_PG_URL" -v ON_ERROR_STOP=1 -qAt <<'SQL'
BEGIN;
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TEMP TABLE selfcheck (id int PRIMARY KEY, v vector(3));
INSERT INTO selfcheck SELECT i, ARRAY[i, i * 2, 1]::vector FROM generate_series(1, 200) i;
CREATE INDEX ON selfcheck USING hnsw (v vector_cosine_ops);
SET LOCAL enable_seqscan = off;
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector')
    || ' ' || (SELECT id FROM selfcheck ORDER BY v <=> '[10,20,1]' LIMIT 1)
    || ' ' || (SELECT count(*) FROM pg_indexes WHERE indexdef LIKE '%hnsw%' AND tablename = 'selfcheck');
ROLLBACK;
SQL
)" || fail "postgres/pgvector"
[ "$(cut -d' ' -f2- <<<"$out")" = "10 1" ] || fail "pgvector HNSW query gave '$out'"
echo "postgres ok: pgvector $(cut -d' ' -f1 <<<"$out"), HNSW index built, nearest neighbour correct"

# --- redis
R=(redis-cli -u "$LAG_REDIS_URL")
[ "$("${R[@]}" ping)" = PONG ] || fail "redis ping"
"${R[@]}" set lag-selfcheck "$msg" EX 10 >/dev/null
[ "$("${R[@]}" get lag-selfcheck)" = "$msg" ] || fail "redis get"
"${R[@]}" del lag-selfcheck >/dev/null
echo "redis    ok: PONG, set/get/del"
echo "verify: all services answered"
