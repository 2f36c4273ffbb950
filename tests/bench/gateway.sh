#!/usr/bin/env bash
# gateway.sh: what gaia-gateway costs. One gaia-registry server (filesystem
# storage, the test PostgreSQL, registered in the test Consul) and one
# gaia-gateway in front of it; regbench drives the server directly and
# through the gateway in the same run, interleaved, and prints ratios
# (gateway vs direct; > 1 would mean the gateway is faster).
#
#   bash tests/bench/gateway.sh [--quick]
#
# Scenarios: 1 GiB push and pull (median of 3), manifest GETs at 32 clients
# (throughput) and at 4 clients (latency: the p99 the gateway adds when the
# machine is not saturated).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SVC="$REPO/tests/services/svc.sh"
BLOB_SIZE=1GiB; N=3; DURATION=10s
[ "${1:-}" = --quick ] && { BLOB_SIZE=16MiB; N=1; DURATION=3s; }
log() { echo "gateway-bench: $(date +%H:%M:%S) $*" >&2; }
die() { echo "gateway-bench: ERROR: $*" >&2; exit 1; }

bash "$SVC" start postgres consul >&2
eval "$(bash "$SVC" env postgres consul | sed 's/^/export /')"
make -s -C "$REPO" build
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gaia-gwbench.XXXXXX")"
DB="gaia_gwbench_$(date +%s)_$$"
SERVICE="gaia-registry-bench-$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql "$GAIA_TEST_PG_DSN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
psql "$GAIA_TEST_PG_DSN" -qc "CREATE DATABASE $DB"
url="${GAIA_TEST_PG_DSN/\/postgres\?//$DB?}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SP="$(free_port)"; GP="$(free_port)"
cat > "$WORK/registry.yml" <<CFG
log: {level: warn}
http: {addr: 127.0.0.1:$SP, draintimeout: 5s}
storage: {filesystem: {rootdirectory: $WORK/data}, delete: {enabled: true}}
database: {url: "$url", migrate: true}
cluster:
  idc: bench
  consul: {addr: "$GAIA_TEST_CONSUL_ADDR", service: $SERVICE, checkinterval: 2s}
CFG
cat > "$WORK/gateway.yml" <<CFG
log: {level: warn}
http: {addr: 127.0.0.1:$GP}
idc: bench
consul: {addr: "$GAIA_TEST_CONSUL_ADDR", service: $SERVICE}
CFG
"$REPO/bin/gaia-registry" serve --config "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 & pids+=($!)
"$REPO/bin/gaia-gateway" --config "$WORK/gateway.yml" >"$WORK/gateway.log" 2>&1 & pids+=($!)
for u in "http://127.0.0.1:$SP" "http://127.0.0.1:$GP"; do
  for _ in $(seq 1 200); do curl -fsS -o /dev/null "$u/readyz" 2>/dev/null && continue 2; sleep 0.1; done
  cat "$WORK"/*.log >&2; die "$u not ready"
done
(cd "$REPO" && go build -o "$WORK/regbench" ./tests/bench/regbench)
targets=(-target "direct=http://127.0.0.1:$SP" -target "gateway=http://127.0.0.1:$GP")
log "throughput: push, pull, manifest GETs at 32 clients"
"$WORK/regbench" "${targets[@]}" -scenarios push,pull,manifest -push-clients regbench -pull-clients regbench -blob-size "$BLOB_SIZE" -n "$N" -duration "$DURATION" -concurrency 32 \
  -note "one gaia-registry (filesystem, PostgreSQL) and one gaia-gateway on loopback; 2 cores shared with the client"
log "latency: manifest GETs at 4 clients"
"$WORK/regbench" "${targets[@]}" -repo-prefix regbench-lat -scenarios manifest -duration "$DURATION" -concurrency 4
