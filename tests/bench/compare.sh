#!/usr/bin/env bash
# compare.sh: Gaia vs the stock CNCF distribution registry (v3.1.2), same
# machine, same run, filesystem storage for both, through regbench
# (tests/bench/regbench). See tests/bench/README.md.
#
#   bash tests/bench/compare.sh [options] [-- extra regbench flags]
#
#   --quick             tiny smoke run: 8 MiB blob, 100 tags, 1000 repos, 3 s manifest run,
#                       20 pushes x 2 s in the busy scenario
#   --stock-only        stock vs stock (two stock registries; no Gaia, no PostgreSQL):
#                       validates the harness, ratios should be near 1.0
#   --scenarios LIST    regbench scenarios (default push,pull,manifest,busy,tags,catalog)
#   --push-clients LIST push clients (default curl-put,curl-patch,crane,regbench)  env PUSH_CLIENTS
#   --pull-clients LIST pull clients (default curl,crane,ctr,regbench)             env PULL_CLIENTS
#   --blob-size SIZE    push/pull blob (default 1GiB)          env BLOB_SIZE
#   --n N               push repetitions per client (default 3)   env N
#   --pull-n N          pull repetitions per client (default 5)   env PULL_N
#   --busy-pushes N     busy scenario: concurrent uploads (default 200)   env BUSY_PUSHES
#   --busy-window D     busy scenario: window per round (default 10s)     env BUSY_WINDOW
#   --duration D        manifest run per target (default 10s)  env DURATION
#   --concurrency C     manifest clients (default 32)          env CONCURRENCY
#   --tags N            tags scenario (default 10000)          env TAGS
#   --repos N           catalog scenario (default 100000)      env REPOS
#   --walk-cap D        catalog walk cap (default 5m)          env WALK_CAP
#   --results FILE      where the table goes (default $RESULTS_DIR/compare-<time>.md,
#                       RESULTS_DIR defaults to ~/.cache/gaia/bench-results)
#   --keep              keep the temporary storage directories and logs
#
# Environment: GAIA_BIN (skip `make build`, run this binary instead),
# STOCK_BIN (default ~/.cache/gaia/bin/registry-v3.1.2, built once),
# CRANE_BIN (default ~/.cache/gaia/bin/crane-v0.22.1, built once),
# STOCK_ACCESS_LOG=1 (leave the stock registry's per-request access log on),
# TMPDIR (where the storage roots go).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${GAIA_CACHE_DIR:-$HOME/.cache/gaia}"
STOCK_VERSION="v3.1.2"
STOCK_BIN="${STOCK_BIN:-$CACHE/bin/registry-$STOCK_VERSION}"
CRANE_VERSION="v0.22.1"
CRANE_BIN="${CRANE_BIN:-$CACHE/bin/crane-$CRANE_VERSION}"

SCENARIOS="${SCENARIOS:-push,pull,manifest,busy,tags,catalog}"
PUSH_CLIENTS="${PUSH_CLIENTS:-curl-put,curl-patch,crane,regbench}"
PULL_CLIENTS="${PULL_CLIENTS:-curl,crane,ctr,regbench}"
BUSY_PUSHES="${BUSY_PUSHES:-200}"
BUSY_WINDOW="${BUSY_WINDOW:-10s}"
BUSY_ROUNDS="${BUSY_ROUNDS:-2}"
BLOB_SIZE="${BLOB_SIZE:-1GiB}"
N="${N:-3}"
PULL_N="${PULL_N:-5}"
DURATION="${DURATION:-10s}"
CONCURRENCY="${CONCURRENCY:-32}"
TAGS="${TAGS:-10000}"
REPOS="${REPOS:-100000}"
WALK_CAP="${WALK_CAP:-5m}"
RESULTS=""
STOCK_ONLY=""
KEEP=""
EXTRA=()

log() { echo "compare: $(date +%H:%M:%S) $*" >&2; }
die() { echo "compare: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) BLOB_SIZE=8MiB; PULL_N=3; TAGS=100; REPOS=1000; DURATION=3s; WALK_CAP=1m; BUSY_PUSHES=20; BUSY_WINDOW=2s; BUSY_ROUNDS=1 ;;
    --stock-only) STOCK_ONLY=1 ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --push-clients) PUSH_CLIENTS="$2"; shift ;;
    --pull-clients) PULL_CLIENTS="$2"; shift ;;
    --busy-pushes) BUSY_PUSHES="$2"; shift ;;
    --busy-window) BUSY_WINDOW="$2"; shift ;;
    --blob-size) BLOB_SIZE="$2"; shift ;;
    --n) N="$2"; shift ;;
    --pull-n) PULL_N="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --concurrency) CONCURRENCY="$2"; shift ;;
    --tags) TAGS="$2"; shift ;;
    --repos) REPOS="$2"; shift ;;
    --walk-cap) WALK_CAP="$2"; shift ;;
    --results) RESULTS="$2"; shift ;;
    --keep) KEEP=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (try --help)" ;;
  esac
  shift
done

command -v curl >/dev/null || die "curl is required"
command -v go >/dev/null || die "go is required"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gaia-compare.XXXXXX")"
PIDS=()
CTRD_PID=""
CTRD_DIR=""
DB=""
PG_ADMIN_URL=""

cleanup() {
  local rc=$? t_clean=$SECONDS
  set +e
  if [ -n "$CTRD_PID" ]; then
    kill "$CTRD_PID" 2>/dev/null
    wait "$CTRD_PID" 2>/dev/null
  fi
  [ -z "$CTRD_DIR" ] || rm -rf "$CTRD_DIR"
  if [ ${#PIDS[@]} -gt 0 ]; then
    # SIGTERM (graceful drain), SIGKILL whatever is left after 15 s. The
    # servers are our children: until reaped they are zombies, which
    # kill -0 would take for alive.
    kill "${PIDS[@]}" 2>/dev/null
    local pid i
    for pid in "${PIDS[@]}"; do
      for i in $(seq 1 60); do
        case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ""|Z*) break ;; esac
        sleep 0.25
      done
      kill -9 "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    done
  fi
  if [ -n "$DB" ]; then
    psql "$PG_ADMIN_URL" -q -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 \
      && log "dropped database $DB" || log "WARNING: could not drop database $DB"
  fi
  local t_rm=$SECONDS
  if [ -n "$KEEP" ]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  log "cleanup took $((SECONDS - t_clean)) s (servers and database $((t_rm - t_clean)) s, removing $WORK $((SECONDS - t_rm)) s)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port: a port nobody listens on, below the ephemeral range (see
# tests/services/svc.sh), picked at random to avoid parallel runs.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  die "no free port found"
}

# start_server NAME PORT CMD...: start in the background, log to $WORK/NAME.log.
start_server() {
  local name="$1" port="$2"; shift 2
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  local pid=$! deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "---- $WORK/$name.log ----" >&2; tail -n 40 "$WORK/$name.log" >&2
      die "$name exited during start-up"
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "---- $WORK/$name.log ----" >&2; tail -n 40 "$WORK/$name.log" >&2
      die "$name does not answer GET http://127.0.0.1:$port/v2/ after 60s"
    fi
    sleep 0.2
  done
  log "$name answers on http://127.0.0.1:$port (pid $pid)"
}

# stock_config NAME PORT: distribution's config, stock defaults
# (cache: blobdescriptor: inmemory), filesystem storage in $WORK/NAME.
stock_config() {
  local name="$1" port="$2"
  mkdir -p "$WORK/$name-data"
  cat >"$WORK/$name.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: $([ "${STOCK_ACCESS_LOG:-}" = 1 ] && echo false || echo true)
storage:
  filesystem:
    rootdirectory: $WORK/$name-data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
EOF
}

T0=$SECONDS

# ---- the stock registry, built once into the cache
if [ ! -x "$STOCK_BIN" ]; then
  log "building distribution $STOCK_VERSION into $CACHE/bin (once; several minutes on 2 cores)"
  mkdir -p "$CACHE/bin"
  (cd "$WORK" && GOBIN="$CACHE/bin" go install "github.com/distribution/distribution/v3/cmd/registry@$STOCK_VERSION")
  mv "$CACHE/bin/registry" "$CACHE/bin/registry-$STOCK_VERSION"
  STOCK_BIN="$CACHE/bin/registry-$STOCK_VERSION"
fi
"$STOCK_BIN" --version >&2

# ---- the real clients: curl (Debian), crane (built once into the cache),
# containerd's ctr (Debian's containerd, which svc.sh's dockerd install
# brings) against a containerd of our own
has() { case ",$1," in *",$2,"*) return 0 ;; esac; return 1; }
uses_push() { has "$SCENARIOS" push && has "$PUSH_CLIENTS" "$1"; }
uses_pull() { has "$SCENARIOS" pull && has "$PULL_CLIENTS" "$1"; }
CLIENT_FLAGS=(-push-clients "$PUSH_CLIENTS" -pull-clients "$PULL_CLIENTS" -work-dir "$WORK/clients")
mkdir -p "$WORK/clients"
if uses_push crane || uses_pull crane; then
  if [ ! -x "$CRANE_BIN" ]; then
    log "building crane $CRANE_VERSION into $CACHE/bin (once)"
    mkdir -p "$CACHE/bin"
    (cd "$WORK" && GOBIN="$WORK/gobin" go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION")
    mv "$WORK/gobin/crane" "$CACHE/bin/crane-$CRANE_VERSION"
    CRANE_BIN="$CACHE/bin/crane-$CRANE_VERSION"
  fi
  CLIENT_FLAGS+=(-crane "$CRANE_BIN")
fi
if uses_pull ctr; then
  command -v containerd >/dev/null && command -v ctr >/dev/null \
    || die "the ctr client needs Debian's containerd (bash tests/services/svc.sh install dockerd installs it), or --pull-clients without ctr"
  [ "$(id -u)" -eq 0 ] || die "the ctr client needs a containerd of our own, which must run as root (or --pull-clients without ctr)"
  # Its content store on tmpfs, so that the client's disk does not bound
  # the fetches (containerd fsyncs what it fetches).
  CTRD_DIR="$(mktemp -d /dev/shm/gaia-compare-containerd.XXXXXX)"
  cat >"$WORK/containerd.toml" <<CONF
version = 2
root = "$CTRD_DIR/root"
state = "$CTRD_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$WORK/containerd.sock"
[ttrpc]
  address = ""
[debug]
  address = ""
CONF
  containerd --config "$WORK/containerd.toml" >"$WORK/containerd.log" 2>&1 &
  CTRD_PID=$!
  for _ in $(seq 1 100); do
    ctr --address "$WORK/containerd.sock" version >/dev/null 2>&1 && break
    kill -0 "$CTRD_PID" 2>/dev/null || { tail -n 20 "$WORK/containerd.log" >&2; die "containerd exited during start-up"; }
    sleep 0.1
  done
  ctr --address "$WORK/containerd.sock" version >/dev/null 2>&1 || die "containerd does not answer on $WORK/containerd.sock"
  log "containerd $(containerd --version | awk '{print $3}') answers on $WORK/containerd.sock (content store in $CTRD_DIR, tmpfs)"
  CLIENT_FLAGS+=(-ctr-address "$WORK/containerd.sock")
fi

# ---- Gaia
if [ -z "$STOCK_ONLY" ]; then
  if [ -z "${GAIA_BIN:-}" ]; then
    log "make -C $REPO build"
    make -C "$REPO" build >&2
    GAIA_BIN="$REPO/bin/gaia-registry"
  fi
  [ -x "$GAIA_BIN" ] || die "GAIA_BIN $GAIA_BIN is not an executable"
fi

# ---- regbench, compiled once (no compiling during the measurements)
log "building regbench"
(cd "$REPO" && go build -o "$WORK/regbench" ./tests/bench/regbench)
T_BUILD=$((SECONDS - T0))

# ---- servers
STOCK_PORT="$(free_port)"
stock_config stock "$STOCK_PORT"
start_server stock "$STOCK_PORT" "$STOCK_BIN" serve "$WORK/stock.yml"
NOTES=(-note "stock: distribution $STOCK_VERSION, filesystem storage, stock defaults incl. cache: blobdescriptor: inmemory; access log $([ "${STOCK_ACCESS_LOG:-}" = 1 ] && echo on || echo off) (log.level warn)")

if [ -n "$STOCK_ONLY" ]; then
  OTHER=stock2
  OTHER_PORT="$(free_port)"
  [ "$OTHER_PORT" != "$STOCK_PORT" ] || OTHER_PORT="$(free_port)"
  stock_config stock2 "$OTHER_PORT"
  start_server stock2 "$OTHER_PORT" "$STOCK_BIN" serve "$WORK/stock2.yml"
  NOTES+=(-note "--stock-only: stock2 is a second, identical stock registry (harness validation: ratios should be near 1.0)")
else
  OTHER=gaia
  command -v psql >/dev/null || die "psql is required (Debian: postgresql-client)"
  log "starting PostgreSQL (tests/services/svc.sh start postgres)"
  bash "$REPO/tests/services/svc.sh" start postgres >&2
  PG_ADMIN_URL="$(bash "$REPO/tests/services/svc.sh" env postgres | sed -n 's/^GAIA_TEST_PG_DSN=//p')"
  [ -n "$PG_ADMIN_URL" ] || die "svc.sh env postgres printed no GAIA_TEST_PG_DSN"
  DB="gaia_bench_$(date +%Y%m%d%H%M%S)_$$"
  psql "$PG_ADMIN_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB\"" >&2 || { DB=""; die "CREATE DATABASE failed"; }
  base="${PG_ADMIN_URL%%\?*}"; query="${PG_ADMIN_URL#"$base"}"
  GAIA_DB_URL="${base%/*}/$DB$query"
  log "fresh database $DB"
  OTHER_PORT="$(free_port)"
  [ "$OTHER_PORT" != "$STOCK_PORT" ] || OTHER_PORT="$(free_port)"
  mkdir -p "$WORK/gaia-data"
  cat >"$WORK/gaia.yml" <<EOF
log: {level: warn, formatter: text}
http: {addr: 127.0.0.1:$OTHER_PORT, draintimeout: 5s}
storage:
  filesystem: {rootdirectory: $WORK/gaia-data}
database:
  url: $GAIA_DB_URL
  migrate: true
EOF
  start_server gaia "$OTHER_PORT" "$GAIA_BIN" serve --config "$WORK/gaia.yml"
  rev="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  [ -z "$(git -C "$REPO" status --porcelain 2>/dev/null | head -n 1)" ] || rev="$rev+dirty"
  NOTES+=(-note "gaia: $GAIA_BIN (tree $rev), filesystem storage, PostgreSQL database $DB (fresh; the svc.sh test server, fsync=off)")
fi
NOTES+=(-note "machine: $(nproc) cores, $(uname -sr); client and servers share the cores; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)")
if uses_push curl-put || uses_push curl-patch || uses_pull curl; then NOTES+=(-note "curl: $(curl --version | head -n 1 | cut -d' ' -f1-2), defaults"); fi
if uses_push crane || uses_pull crane; then NOTES+=(-note "crane: $("$CRANE_BIN" version) (go-containerregistry), defaults"); fi

# ---- the benchmark
if [ -z "$RESULTS" ]; then
  mkdir -p "${RESULTS_DIR:-$CACHE/bench-results}"
  RESULTS="${RESULTS_DIR:-$CACHE/bench-results}/compare-$([ -n "$STOCK_ONLY" ] && echo stock-only- || true)$(date +%Y%m%d-%H%M%S).md"
fi
mkdir -p "$(dirname "$RESULTS")"
log "running regbench: scenarios $SCENARIOS, blob $BLOB_SIZE (push: $PUSH_CLIENTS x $N; pull: $PULL_CLIENTS x $PULL_N), manifest $CONCURRENCY x $DURATION, busy $BUSY_PUSHES pushes x $BUSY_WINDOW x $BUSY_ROUNDS, $TAGS tags, $REPOS repos"
T1=$SECONDS
"$WORK/regbench" \
  -target "stock=http://127.0.0.1:$STOCK_PORT" -target "$OTHER=http://127.0.0.1:$OTHER_PORT" \
  -scenarios "$SCENARIOS" -blob-size "$BLOB_SIZE" -n "$N" -pull-n "$PULL_N" -duration "$DURATION" -concurrency "$CONCURRENCY" \
  -tags "$TAGS" -repos "$REPOS" -catalog-walk-cap "$WALK_CAP" \
  -busy-pushes "$BUSY_PUSHES" -busy-window "$BUSY_WINDOW" -busy-rounds "$BUSY_ROUNDS" \
  "${CLIENT_FLAGS[@]}" "${NOTES[@]}" ${EXTRA[@]+"${EXTRA[@]}"} \
  2> >(tee "$RESULTS.log" >&2) | tee "$RESULTS"
T_RUN=$((SECONDS - T1))
for s in stock "$OTHER"; do
  if [ -s "$WORK/$s.log" ]; then cp "$WORK/$s.log" "${RESULTS%.md}.$s.log"; fi
done
log "build/setup $T_BUILD s, benchmark $T_RUN s, total $((SECONDS - T0)) s"
log "results: $RESULTS (progress log: $RESULTS.log)"
