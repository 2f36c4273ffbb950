#!/usr/bin/env bash
# cluster.sh: a two-IDC Gaia registry cluster on this machine, in the
# foreground (`make cluster`). Per IDC: two gaia-registry servers with that
# IDC's own storage and one gaia-gateway; one PostgreSQL and one Consul
# agent for both (tests/services/svc.sh starts them). The servers and
# gateways run from the configs in configs/cluster/. Ctrl-C stops
# everything gracefully.
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

services=(postgres consul)
[ "$STORAGE" = hdfs ] && services+=(hdfs)
[ "$STORAGE" = filesystem ] || [ "$STORAGE" = hdfs ] || die "STORAGE must be filesystem or hdfs, not $STORAGE"
bash "$SVC" start "${services[@]}"
dsn="$(bash "$SVC" env postgres | sed -n 's/^GAIA_TEST_PG_DSN=//p')"
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

cat <<MSG
cluster: ready ($STORAGE storage, logs in $LOGS)
  IDC idc-a gateway: 127.0.0.1:6000   servers 127.0.0.1:5101, 127.0.0.1:5102
  IDC idc-b gateway: 127.0.0.1:6001   servers 127.0.0.1:5201, 127.0.0.1:5202
  scheduler (cluster local): 127.0.0.1:7000, admin token local-admin, node token local-node
  try: docker push 127.0.0.1:6000/library/app:1 && docker pull 127.0.0.1:6001/library/app:1
  Ctrl-C stops everything.
MSG
# Stay in the foreground until Ctrl-C, or until any process dies.
wait -n "${pids[@]}" || true
log "a process exited; see $LOGS"
stop_all
exit 1
