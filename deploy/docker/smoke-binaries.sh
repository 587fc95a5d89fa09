#!/usr/bin/env bash
# The closest this machine gets to running the containers (there is no Docker engine): one
# enforcer and two `pipeline job` replicas, as uid 10001, with the image's file layout (model,
# sql/, /etc/lag) under a scratch root, the command lines of deploy/k8s, the k8s ConfigMap's
# enforcer config and the endpoints from env (LAG_ETCD_ENDPOINTS / LAG_KAFKA_BROKERS),
# against the real etcd and Kafka of `deploy/services.sh up etcd kafka`. Then 45 s of POST
# /pay (about 80 req/s on loopback) to an upstream that does not exist, and it checks that the
# replicas issued a policy through Kafka and etcd and the enforcer rejected with it.
#
# Changed from the manifests, only to share the machine: listener ports, the Kafka topic
# prefix (smoke-deploy.), the decision topic (smoke-deploy.policies) and the etcd prefix
# (/lag-deploy-smoke/). The topics are created here (the record topics with equal partition
# counts, as the pipeline's range assignment needs).
# Usage: bash deploy/docker/smoke-binaries.sh   (needs python3 with PyYAML, curl, setpriv)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lag-target/ci}"
eval "$(bash deploy/services.sh env)"
bash deploy/services.sh status etcd kafka >/dev/null || { echo "run: bash deploy/services.sh up etcd kafka" >&2; exit 1; }

S="$(mktemp -d /tmp/lag-smoke.XXXXXX)"
pids=()
# Stop both binaries; keep the logs, drop the copies of the binaries and the model.
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$S/bin" "$S/opt"
}
trap cleanup EXIT

cargo build -q -p enforcer -p pipeline --bins
mkdir -p "$S/bin" "$S/etc/lag" "$S/opt/lag/models"
cp "$CARGO_TARGET_DIR/debug/enforcer" "$CARGO_TARGET_DIR/debug/pipeline" "$S/bin/"
cp -r udfs/models/multilingual-e5-small-int8 "$S/opt/lag/models/"
cp -r sql "$S/opt/lag/sql"
python3 - "$S" <<'PY'
import sys, yaml
root = sys.argv[1]
text = yaml.safe_load(open("deploy/k8s/11-config.yaml"))["data"]["enforcer.yaml"]
for name, listen, admin in (("enforcer", 18480, 19480),):
    t = (text.replace("listen: 0.0.0.0:8080", f"listen: 0.0.0.0:{listen}")
             .replace("admin_listen: 0.0.0.0:9090", f"admin_listen: 0.0.0.0:{admin}")
             .replace('topic_prefix: "gateway."', 'topic_prefix: "smoke-deploy."')
             .replace("prefix: /lag/policies/", "prefix: /lag-deploy-smoke/"))
    assert f":{admin}" in t and "smoke-deploy." in t and "/lag-deploy-smoke/" in t, "the ConfigMap changed shape"
    open(f"{root}/etc/lag/{name}.yaml", "w").write(t)
PY
chmod -R a+rX "$S"

# The topics (deploy/services.sh's Kafka tools, as deploy/services/verify.sh uses them).
LIBS="$(ls -d "${LAG_SERVICES_CACHE:-/var/cache/lag-services}"/kafka-*/libs | tail -n1)"
ktopics() { java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
  -Dlog4j2.configurationFile=deploy/services/kafka/tools-log4j2.properties -cp "$LIBS/*" \
  org.apache.kafka.tools.TopicCommand --bootstrap-server "$LAG_KAFKA_BROKERS" "$@"; }
for spec in smoke-deploy.error_events:2 smoke-deploy.traffic_samples:2 smoke-deploy.route_counts:2 smoke-deploy.policies:1; do
  ktopics --create --if-not-exists --topic "${spec%%:*}" --partitions "${spec##*:}" --replication-factor 1 >/dev/null
done
# exec: the background job's pid is then the binary's, so the EXIT trap stops the binary.
as_user() { exec setpriv --reuid=10001 --regid=10001 --clear-groups env HOME=/nonexistent RUST_LOG=info \
  LAG_ETCD_ENDPOINTS="$LAG_ETCD_ENDPOINTS" LAG_KAFKA_BROKERS="$LAG_KAFKA_BROKERS" "$@"; }

(as_user "$S/bin/enforcer" run --config "$S/etc/lag/enforcer.yaml" 2>"$S/enforcer.log") &
pids+=($!)
for i in 1 2; do
  (as_user env LAG_MODEL_DIR="$S/opt/lag/models/multilingual-e5-small-int8" PIPELINE_API_TOKEN=smoke \
    "$S/bin/pipeline" job --sql "$S/opt/lag/sql/incident.sql" --kafka-topic-prefix smoke-deploy. \
    --kafka-group smoke-deploy --policies-topic smoke-deploy.policies --etcd-prefix /lag-deploy-smoke/ \
    --instance "smoke-$i" --api-listen "0.0.0.0:1948$i" 2>"$S/pipeline-$i.log") &
  pids+=($!)
done

for _ in $(seq 1 120); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19480/ready)" = 200 ] && break
  sleep 0.5
done
echo "enforcer admin :19480  /health $(curl -s http://127.0.0.1:19480/health)  /ready $(curl -s http://127.0.0.1:19480/ready)"
for port in 19481 19482; do
  for _ in $(seq 1 120); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ] && break
    sleep 0.5
  done
  echo "pipeline job :$port  /health $(curl -s "http://127.0.0.1:$port/health")" \
    " API without token $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/api/v1/policies")" \
    " with $(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer smoke' "http://127.0.0.1:$port/api/v1/policies")"
done
# The images' HEALTHCHECK command, against the enforcer's admin port.
bash -c "exec 3<>/dev/tcp/127.0.0.1/19480 && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && head -n1 <&3 | grep -q ' 200 '" \
  && echo "HEALTHCHECK command: ok"

python3 - <<'PY'
import collections, threading, time, urllib.error, urllib.request
end, counts, lock = time.time() + 45, collections.Counter(), threading.Lock()
def worker():
    while time.time() < end:
        t = time.time()
        req = urllib.request.Request("http://127.0.0.1:18480/pay", data=b'{"channel":"alipay"}', method="POST")
        try:
            with urllib.request.urlopen(req, timeout=2) as r: code, pol = r.status, r.headers.get("x-gateway-policy")
        except urllib.error.HTTPError as e: code, pol = e.code, e.headers.get("x-gateway-policy")
        except Exception as e: code, pol = type(e).__name__, None
        with lock: counts[f"{code} policy={pol not in (None, '-')}"] += 1
        time.sleep(max(0, 0.1 - (time.time() - t)))
threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("responses:", dict(counts))
PY
curl -s http://127.0.0.1:19480/metrics | grep -E '^(enforcer_policies_live|enforcer_policy_source_connected|rate_limit_hits_total)'
for port in 19481 19482; do
  curl -s "http://127.0.0.1:$port/metrics" | grep -E '^pipeline_(policy_changes_total\{change="issued"\}|snapshots_published_total)' | sed "s/^/:$port /"
done
live="$(curl -s http://127.0.0.1:19480/metrics | awk '$1 == "enforcer_policies_live" {print $2}')"
[ "${live:-0}" -ge 1 ] || { echo "FAILED: no policy reached the enforcer; logs in $S" >&2; exit 1; }
echo "ok: a policy went pipeline -> etcd -> enforcer (logs in $S)"
