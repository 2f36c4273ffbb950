#!/usr/bin/env bash
# cluster.sh: a two-IDC Gaia registry cluster on this machine, in the
# foreground (`make cluster`). Per IDC: two gaia-registry servers with that
# IDC's own storage and one gaia-gateway; one PostgreSQL and one Consul
# agent for both (tests/services/svc.sh starts them). The servers and
# gateways run from the configs in configs/cluster/; beside them one
# gaia-scheduler (configs/cluster/scheduler.yml) and three gaia-nodeagents
# (node-1..3 on 127.0.0.2-4, sharing the test dockerd). Ctrl-C stops
# everything gracefully (the agents leave their instances running).
#
#   bash tests/cluster/cluster.sh            # storage: ./data/cluster/idc-{a,b}
#   STORAGE=hdfs bash tests/cluster/cluster.sh   # storage: HDFS, a root per IDC
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
SVC=tests/services/svc.sh
STORAGE="${STORAGE:-filesystem}"
LOGS="$REPO/data/cluster/logs"

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: ERROR: $*" >&2; exit 1; }

services=(postgres consul dockerd)
[ "$STORAGE" = hdfs ] && services+=(hdfs)
[ "$STORAGE" = filesystem ] || [ "$STORAGE" = hdfs ] || die "STORAGE must be filesystem or hdfs, not $STORAGE"
bash "$SVC" start "${services[@]}"
dsn="$(bash "$SVC" env postgres | sed -n 's/^GAIA_TEST_PG_DSN=//p')"
docker_host="$(bash "$SVC" env dockerd | sed -n 's/^GAIA_TEST_DOCKER_HOST=//p')"
[ -n "$docker_host" ] || die "svc.sh env dockerd printed no GAIA_TEST_DOCKER_HOST"
[ -n "$dsn" ] || die "svc.sh env postgres printed no GAIA_TEST_PG_DSN"
# One database per storage mode: the metadata must match the storage. The
# test HDFS is formatted afresh whenever it starts, so its cluster starts
# empty too.
db=gaia_cluster
if [ "$STORAGE" = hdfs ]; then
  db=gaia_cluster_hdfs
  psql "$dsn" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || die "cannot reset database $db"
fi
if ! psql "$dsn" -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  psql "$dsn" -qc "CREATE DATABASE $db" || die "cannot create database $db"
fi
make -s build
mkdir -p "$LOGS" data/cluster/idc-a data/cluster/idc-b

pids=()
stop_all() {
  trap - INT TERM
  log "stopping (graceful: in-flight requests finish)"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  log "stopped"
}
trap 'stop_all; exit 0' INT TERM

suffix=""
[ "$STORAGE" = hdfs ] && suffix="-hdfs"
start_server() { # idc port
  local cfg="configs/cluster/registry-idc-$1$suffix.yml"
  GAIA_HTTP_ADDR="127.0.0.1:$2" GAIA_CLUSTER_ADVERTISE="127.0.0.1:$2" \
    bin/gaia-registry serve --config "$cfg" >"$LOGS/registry-idc-$1-$2.log" 2>&1 &
  pids+=($!)
}
wait_ready() { # url log
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1/readyz" 2>/dev/null && return 0
    sleep 0.2
  done
  tail -n 30 "$2" >&2
  die "$1 not ready after 60s (log: $2)"
}

for idc in a b; do
  base=$([ $idc = a ] && echo 51 || echo 52)
  for n in 01 02; do
    start_server "$idc" "$base$n"
    wait_ready "http://127.0.0.1:$base$n" "$LOGS/registry-idc-$idc-$base$n.log"
  done
done
for idc in a b; do
  GAIA_GATEWAY_DATABASE_URL="postgres://postgres@127.0.0.1:25432/$db?sslmode=disable" \
    bin/gaia-gateway --config "configs/cluster/gateway-idc-$idc.yml" >"$LOGS/gateway-idc-$idc.log" 2>&1 &
  pids+=($!)
done
wait_ready http://127.0.0.1:6000 "$LOGS/gateway-idc-a.log"
wait_ready http://127.0.0.1:6001 "$LOGS/gateway-idc-b.log"
# One scheduler (cluster "local"), its state in the same database.
GAIA_DATABASE_URL="${dsn/\/postgres\?//$db?}" bin/gaia-scheduler --config configs/cluster/scheduler.yml >"$LOGS/scheduler.log" 2>&1 &
pids+=($!)
wait_ready http://127.0.0.1:7000 "$LOGS/scheduler.log"
# Three node agents (idc-a), each node on a loopback address of its own
# where it publishes its instances' ports and serves logs and exec on
# :5300, all sharing the test dockerd, pulling through IDC a's gateway.
# Their containers carry their node's label; a restarted cluster adopts
# them.
mkdir -p data/cluster/agents
for n in 2 3 4; do
  node="node-$((n - 1))"
  cat >"data/cluster/agents/$node.yml" <<CFG
log: {level: info, formatter: text}
http: {addr: "127.0.0.$n:5300"}
node: {name: $node, idc: idc-a, address: 127.0.0.$n, datadir: "$REPO/data/cluster/agents", capacity: {cpu: 2, memory: 2Gi}}
scheduler: {urls: ["http://127.0.0.1:7000"], token: local-node}
docker: {host: "$docker_host"}
registry: {gateway: "127.0.0.1:6000"}
consul: {addr: 127.0.0.1:25500}
instances: {publiship: 127.0.0.$n, stoptimeout: 5s}
agent: {reportinterval: 2s}
CFG
  bin/gaia-nodeagent --config "data/cluster/agents/$node.yml" >"$LOGS/nodeagent-$node.log" 2>&1 &
  pids+=($!)
done
for n in 2 3 4; do
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://127.0.0.$n:5300/readyz" 2>/dev/null && break
    sleep 0.2
  done
  curl -fsS -o /dev/null "http://127.0.0.$n:5300/readyz" || { tail -n 30 "$LOGS/nodeagent-node-$((n - 1)).log" >&2; die "node agent on 127.0.0.$n not ready after 60s"; }
done
# A pool for the newcomer's apps (already there after a restart).
curl -fsS -o /dev/null -X POST -H 'Authorization: Bearer local-admin' -H 'Content-Type: application/json' \
  -d '{"name": "root.dev"}' http://127.0.0.1:7000/v1/pools 2>/dev/null || true

cat <<MSG
cluster: ready ($STORAGE storage, logs in $LOGS)
  IDC idc-a gateway: 127.0.0.1:6000   servers 127.0.0.1:5101, 127.0.0.1:5102
  IDC idc-b gateway: 127.0.0.1:6001   servers 127.0.0.1:5201, 127.0.0.1:5202
  scheduler (cluster local): 127.0.0.1:7000, admin token local-admin, node token local-node, pool root.dev
  node agents: node-1 127.0.0.2, node-2 127.0.0.3, node-3 127.0.0.4 (:5300), docker at $docker_host
  try: docker push 127.0.0.1:6000/library/app:1 && docker pull 127.0.0.1:6001/library/app:1
  an app: docker -H $docker_host push 127.0.0.1:6000/demo/web:1
          bin/gaiactl --server http://127.0.0.1:7000 --token local-admin app submit -f APP.yaml
  Ctrl-C stops everything.
MSG
# Stay in the foreground until Ctrl-C, or until any process dies.
wait -n "${pids[@]}" || true
log "a process exited; see $LOGS"
stop_all
exit 1
