#!/usr/bin/env bash
# compare.sh: Gaia vs the stock CNCF distribution registry (v3.1.2), same
# machine, same run, filesystem storage for both, through regbench
# (tests/bench/regbench). See tests/bench/README.md.
#
#   bash tests/bench/compare.sh [options] [-- extra regbench flags]
#
#   --quick             tiny smoke run: 8 MiB blob, 100 tags, 1000 repos, 3 s manifest run
#   --stock-only        stock vs stock (two stock registries; no Gaia, no PostgreSQL):
#                       validates the harness, ratios should be near 1.0
#   --scenarios LIST    regbench scenarios (default push,pull,manifest,tags,catalog)
#   --blob-size SIZE    push/pull blob (default 1GiB)          env BLOB_SIZE
#   --n N               push/pull repetitions (default 3)      env N
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
# STOCK_ACCESS_LOG=1 (leave the stock registry's per-request access log on),
# TMPDIR (where the storage roots go).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${GAIA_CACHE_DIR:-$HOME/.cache/gaia}"
STOCK_VERSION="v3.1.2"
STOCK_BIN="${STOCK_BIN:-$CACHE/bin/registry-$STOCK_VERSION}"

SCENARIOS="${SCENARIOS:-push,pull,manifest,tags,catalog}"
BLOB_SIZE="${BLOB_SIZE:-1GiB}"
N="${N:-3}"
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
    --quick) BLOB_SIZE=8MiB; TAGS=100; REPOS=1000; DURATION=3s; WALK_CAP=1m ;;
    --stock-only) STOCK_ONLY=1 ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --blob-size) BLOB_SIZE="$2"; shift ;;
    --n) N="$2"; shift ;;
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
DB=""
PG_ADMIN_URL=""

cleanup() {
  local rc=$? t_clean=$SECONDS
  set +e
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
NOTES+=(-note "machine: $(nproc) cores, $(uname -sr); client and servers share the cores")

# ---- the benchmark
if [ -z "$RESULTS" ]; then
  mkdir -p "${RESULTS_DIR:-$CACHE/bench-results}"
  RESULTS="${RESULTS_DIR:-$CACHE/bench-results}/compare-$([ -n "$STOCK_ONLY" ] && echo stock-only- || true)$(date +%Y%m%d-%H%M%S).md"
fi
mkdir -p "$(dirname "$RESULTS")"
log "running regbench: scenarios $SCENARIOS, blob $BLOB_SIZE x $N, manifest $CONCURRENCY x $DURATION, $TAGS tags, $REPOS repos"
T1=$SECONDS
"$WORK/regbench" \
  -target "stock=http://127.0.0.1:$STOCK_PORT" -target "$OTHER=http://127.0.0.1:$OTHER_PORT" \
  -scenarios "$SCENARIOS" -blob-size "$BLOB_SIZE" -n "$N" -duration "$DURATION" -concurrency "$CONCURRENCY" \
  -tags "$TAGS" -repos "$REPOS" -catalog-walk-cap "$WALK_CAP" \
  "${NOTES[@]}" ${EXTRA[@]+"${EXTRA[@]}"} \
  2> >(tee "$RESULTS.log" >&2) | tee "$RESULTS"
T_RUN=$((SECONDS - T1))
for s in stock "$OTHER"; do
  if [ -s "$WORK/$s.log" ]; then cp "$WORK/$s.log" "${RESULTS%.md}.$s.log"; fi
done
log "build/setup $T_BUILD s, benchmark $T_RUN s, total $((SECONDS - T0)) s"
log "results: $RESULTS (progress log: $RESULTS.log)"
