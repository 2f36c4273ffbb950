#!/usr/bin/env bash
# gateway.sh: what gaia-gateway costs. One gaia-registry server (filesystem
# storage, the test PostgreSQL, registered in the test Consul) and two
# gaia-gateways in front of it: "gw-off" (redirect: off, no cache: every
# byte through the gateway, blob downloads spliced) and "gw-on"
# (redirect: blobs+uploads, cache of manifests and blob HEADs by digest).
# regbench drives the server directly and through both gateways in the
# same run, interleaved, and prints ratios against direct (> 1 would mean
# the gateway is faster). A fourth target, "relay", is a plain TCP relay
# (tests/bench/tcprelay) in front of the server: what moving the bytes
# through any second process costs on this machine, gw-off's floor.
#
#   bash tests/bench/gateway.sh [--quick]
#
# Scenarios: 1 GiB push (regbench's client) and pull (curl -L, crane,
# regbench; median of 3), manifest GETs by digest and by tag at 32 clients
# (throughput), and by tag at 4 clients (latency: the p99 the gateway adds
# when the machine is not saturated).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SVC="$REPO/tests/services/svc.sh"
CACHE="${GAIA_CACHE_DIR:-$HOME/.cache/gaia}"
CRANE_VERSION="v0.22.1"
CRANE_BIN="${CRANE_BIN:-$CACHE/bin/crane-$CRANE_VERSION}"
KEY="gwbench-signing-key-$$-0123456789"
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
SP="$(free_port)"; GP="$(free_port)"; RP="$(free_port)"
cat > "$WORK/registry.yml" <<CFG
log: {level: warn}
http: {addr: 127.0.0.1:$SP, draintimeout: 5s}
storage: {filesystem: {rootdirectory: $WORK/data}, delete: {enabled: true}}
database: {url: "$url", migrate: true}
cluster:
  idc: bench
  consul: {addr: "$GAIA_TEST_CONSUL_ADDR", service: $SERVICE, checkinterval: 2s}
  signingkeys: ["$KEY"]
CFG
cat > "$WORK/gateway-off.yml" <<CFG
log: {level: warn}
http: {addr: 127.0.0.1:$GP}
idc: bench
consul: {addr: "$GAIA_TEST_CONSUL_ADDR", service: $SERVICE}
CFG
cat > "$WORK/gateway-on.yml" <<CFG
log: {level: warn}
http: {addr: 127.0.0.1:$RP}
idc: bench
consul: {addr: "$GAIA_TEST_CONSUL_ADDR", service: $SERVICE}
redirect: blobs+uploads
signing: {keys: ["$KEY"]}
auth: {none: true}
cache: {maxbytes: 67108864}
database: {url: "$url"}
CFG
"$REPO/bin/gaia-registry" serve --config "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 & pids+=($!)
"$REPO/bin/gaia-gateway" --config "$WORK/gateway-off.yml" >"$WORK/gateway-off.log" 2>&1 & pids+=($!)
"$REPO/bin/gaia-gateway" --config "$WORK/gateway-on.yml" >"$WORK/gateway-on.log" 2>&1 & pids+=($!)
for u in "http://127.0.0.1:$SP" "http://127.0.0.1:$GP" "http://127.0.0.1:$RP"; do
  for _ in $(seq 1 600); do curl -fsS -o /dev/null "$u/readyz" 2>/dev/null && continue 2; sleep 0.1; done
  cat "$WORK"/*.log >&2; die "$u not ready"
done
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$RP/metrics" | grep -q '^gaia_gateway_cache_live 1' && break; sleep 0.1
done
if [ ! -x "$CRANE_BIN" ]; then
  log "building crane $CRANE_VERSION into $CACHE/bin (once)"
  mkdir -p "$CACHE/bin" "$WORK/gobin"
  (cd "$WORK" && GOBIN="$WORK/gobin" go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION")
  mv "$WORK/gobin/crane" "$CACHE/bin/crane-$CRANE_VERSION"
  CRANE_BIN="$CACHE/bin/crane-$CRANE_VERSION"
fi
mkdir -p "$WORK/clients"
(cd "$REPO" && go build -o "$WORK/regbench" ./tests/bench/regbench && go build -o "$WORK/tcprelay" ./tests/bench/tcprelay)
# The floor of any relay: a plain TCP splice relay in front of the server.
TP="$(free_port)"
"$WORK/tcprelay" "127.0.0.1:$TP" "127.0.0.1:$SP" 2>"$WORK/tcprelay.log" & pids+=($!)
up=0
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$TP/readyz" 2>/dev/null && { up=1; break; }; sleep 0.1; done
[ "$up" = 1 ] || { cat "$WORK/tcprelay.log" >&2; die "the relay on 127.0.0.1:$TP does not answer"; }
targets=(-target "direct=http://127.0.0.1:$SP" -target "gw-off=http://127.0.0.1:$GP" -target "gw-on=http://127.0.0.1:$RP" -target "relay=http://127.0.0.1:$TP")
note="one gaia-registry (filesystem, PostgreSQL) and two gaia-gateways on loopback (gw-off: redirect off, no cache; gw-on: redirect: blobs+uploads, cache.maxbytes 64 MiB), and relay: a plain TCP splice relay (tests/bench/tcprelay), the floor of any relay; 2 cores shared with the clients"
log "throughput: push, pull (curl -L, crane, regbench), manifest GETs by digest at 32 clients"
"$WORK/regbench" "${targets[@]}" -scenarios push,pull,manifest -push-clients regbench -pull-clients curl,crane,regbench \
  -crane "$CRANE_BIN" -work-dir "$WORK/clients" -manifest-ref digest \
  -blob-size "$BLOB_SIZE" -n "$N" -duration "$DURATION" -concurrency 32 -note "$note"
log "throughput: manifest GETs by tag at 32 clients"
"$WORK/regbench" "${targets[@]}" -repo-prefix regbench-tag -scenarios manifest -duration "$DURATION" -concurrency 32
log "latency: manifest GETs by tag at 4 clients"
"$WORK/regbench" "${targets[@]}" -repo-prefix regbench-lat -scenarios manifest -duration "$DURATION" -concurrency 4
log "gw-on: $(curl -fsS "http://127.0.0.1:$RP/metrics" | grep -E '^gaia_gateway_(redirects_total|blob_bytes_total|cache_requests_total)' | tr '\n' ' ')"
