#!/usr/bin/env bash
# svc.sh installs, starts, health-checks and stops the real services Gaia's
# tests run against, each on loopback with its own data directory and port:
#
#   postgres  Debian's PostgreSQL binaries (initdb + pg_ctl, no system service)
#   hdfs      a real NameNode + DataNode (Hadoop's MiniDFSCluster, jars from
#             Maven Central, Java 17), 1 MiB blocks, with a control endpoint
#   hdfs-faults  a second such cluster, for tests that restart or kill it
#   consul    `consul agent -dev` (HTTP API and DNS), built once from the Go module proxy
#   dockerd   Debian's docker.io on a private socket with the vfs driver and
#             its own bridge (published ports work)
#   slapd     Debian's OpenLDAP slapd, an instance of its own (slapd.conf,
#             mdb), seeded with dc=gaia,dc=test, ou=people and ou=groups
#
# Usage: svc.sh install|start|stop|status|env|logs SERVICE... (or "all")
#
# Every command is idempotent: `start` on a healthy service returns at once,
# downloads and builds are cached under $GAIA_CACHE_DIR. When a service
# cannot start, svc.sh exits non-zero and prints the tail of its log.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${GAIA_CACHE_DIR:-$HOME/.cache/gaia}"
STATE="${GAIA_STATE_DIR:-/tmp/gaia-services}"
mkdir -p "$CACHE" "$STATE"

# Fixed ports sit below the kernel's ephemeral range (32768-60999 by
# default): a port in that range can be held by any client connection, or
# its TIME-WAIT, and a server binding it then fails at random.
PG_PORT="${GAIA_PG_PORT:-25432}"
HDFS_NN_PORT="${GAIA_HDFS_PORT:-25020}"
HDFS_CONTROL_PORT="${GAIA_HDFS_CONTROL_PORT:-25021}"
HDFS_FAULTS_NN_PORT="${GAIA_HDFS_FAULTS_PORT:-25030}"
HDFS_FAULTS_CONTROL_PORT="${GAIA_HDFS_FAULTS_CONTROL_PORT:-25031}"
CONSUL_HTTP_PORT="${GAIA_CONSUL_PORT:-25500}"
CONSUL_DNS_PORT="${GAIA_CONSUL_DNS_PORT:-25600}"
CONSUL_VERSION="1.20.0"
LDAP_PORT="${GAIA_LDAP_PORT:-25389}"
HADOOP_VERSION="$(sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' "$HERE/hdfs/pom.xml")"
DOCKER_SOCK="$STATE/dockerd/docker.sock"

ALL_SERVICES=(postgres hdfs hdfs-faults consul dockerd slapd)

log() { echo "svc: $*" >&2; }
die() { echo "svc: ERROR: $*" >&2; exit 1; }

# fail_with_log SERVICE LOGFILE MESSAGE
fail_with_log() {
  echo "svc: ERROR: $1: $3" >&2
  if [ -f "$2" ]; then
    echo "---- last 60 lines of $2 ----" >&2
    tail -n 60 "$2" >&2
    echo "---- end of $2 ----" >&2
  fi
  exit 1
}

# wait_for SECONDS COMMAND...: retry COMMAND every 0.5 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

# wait_started NAME LOGFILE PIDFILE SECONDS CHECK...: wait until CHECK
# succeeds; fail with the log if the daemon exits or time runs out.
wait_started() {
  local name="$1" logf="$2" pidf="$3" secs="$4"; shift 4
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$pidf" || fail_with_log "$name" "$logf" "exited during start-up"
    [ $SECONDS -lt $deadline ] || fail_with_log "$name" "$logf" "not healthy after ${secs}s"
    sleep 0.5
  done
}

apt_updated=""
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "need Debian packages ${missing[*]} but apt-get is not available"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    $sudo apt-get update -qq >"$CACHE/apt.log" 2>&1 || fail_with_log apt "$CACHE/apt.log" "apt-get update failed"
    apt_updated=1
  fi
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >>"$CACHE/apt.log" 2>&1 \
    || fail_with_log apt "$CACHE/apt.log" "apt-get install ${missing[*]} failed"
}

# Tools svc.sh itself uses.
base_tools() {
  local missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v flock >/dev/null || missing+=(util-linux)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid PIDFILE SECONDS: SIGTERM, then SIGKILL if it has not exited in time.
stop_pid() {
  pid_alive "$1" || { rm -f "$1"; return 0; }
  local pid; pid="$(cat "$1")"
  kill "$pid" 2>/dev/null || true
  wait_for "$2" bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

# ---------------------------------------------------------------- postgres
pg_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$d" ] || return 1
  echo "$d"
}
install_postgres() {
  pg_bin >/dev/null || apt_install postgresql
  pg_bin >/dev/null || die "postgres: no /usr/lib/postgresql/*/bin after installing postgresql"
  # PostgreSQL will not run as root; the binaries can be present without
  # the package's postgres user.
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
}
# PostgreSQL refuses to run as root, so as root it runs as the postgres user.
pg_as() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
status_postgres() {
  local bin; bin="$(pg_bin)" || return 1
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
}
start_postgres() {
  install_postgres
  local bin dir logf
  bin="$(pg_bin)"; dir="$STATE/postgres"; logf="$dir/postgres.log"
  status_postgres && return 0
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
  # A postmaster.pid left by a killed server makes postgres refuse to
  # start when its PID now belongs to another process.
  local pidf="$dir/data/postmaster.pid"
  if [ -f "$pidf" ] && [ "$(ps -o comm= -p "$(head -n 1 "$pidf")" 2>/dev/null)" != "postgres" ]; then
    rm -f "$pidf"
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    log "postgres: initdb $dir/data"
    pg_as "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >"$dir/initdb.log" 2>&1 \
      || fail_with_log postgres "$dir/initdb.log" "initdb failed"
  fi
  log "postgres: starting on 127.0.0.1:$PG_PORT"
  pg_as "$bin/pg_ctl" -D "$dir/data" -l "$logf" -w -t 60 start \
    -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" >/dev/null 2>&1 9>&- \
    || fail_with_log postgres "$logf" "pg_ctl start failed"
  wait_for 30 status_postgres || fail_with_log postgres "$logf" "not ready after 30s"
}
stop_postgres() {
  local bin; bin="$(pg_bin)" || return 0
  [ -f "$STATE/postgres/data/postmaster.pid" ] || return 0
  pg_as "$bin/pg_ctl" -D "$STATE/postgres/data" -m fast -w stop >/dev/null 2>&1 || true
}
env_postgres() {
  echo "GAIA_TEST_PG_DSN=postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
}

# ---------------------------------------------------------------- hdfs
HDFS_BUILD="$CACHE/hdfs-$HADOOP_VERSION"
install_hdfs() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v javac >/dev/null || apt_install openjdk-17-jdk-headless
  command -v mvn >/dev/null || apt_install maven
  local src="$HERE/hdfs/MiniHdfs.java"
  if [ -f "$HDFS_BUILD/classpath.txt" ] && [ -f "$HDFS_BUILD/MiniHdfs.class" ] \
     && [ "$HDFS_BUILD/MiniHdfs.class" -nt "$src" ] && [ "$HDFS_BUILD/classpath.txt" -nt "$HERE/hdfs/pom.xml" ]; then
    return 0
  fi
  mkdir -p "$HDFS_BUILD"
  log "hdfs: resolving Hadoop $HADOOP_VERSION jars from Maven Central (first run only)"
  mvn -B -q -f "$HERE/hdfs/pom.xml" dependency:build-classpath \
    -Dmdep.outputFile="$HDFS_BUILD/classpath.txt" >"$HDFS_BUILD/mvn.log" 2>&1 \
    || fail_with_log hdfs "$HDFS_BUILD/mvn.log" "maven could not resolve hadoop-minicluster"
  javac -nowarn -d "$HDFS_BUILD" -cp "$(cat "$HDFS_BUILD/classpath.txt")" "$src" >"$HDFS_BUILD/javac.log" 2>&1 \
    || fail_with_log hdfs "$HDFS_BUILD/javac.log" "javac MiniHdfs.java failed"
}
# Two clusters of the same shape: "hdfs" for ordinary tests and
# "hdfs-faults" for tests that restart or kill its daemons.
hdfs_nn_port() { if [ "$1" = hdfs ]; then echo "$HDFS_NN_PORT"; else echo "$HDFS_FAULTS_NN_PORT"; fi; }
hdfs_control_port() { if [ "$1" = hdfs ]; then echo "$HDFS_CONTROL_PORT"; else echo "$HDFS_FAULTS_CONTROL_PORT"; fi; }
hdfs_ready() { curl -fsS "http://127.0.0.1:$(hdfs_control_port "$1")/ready" >/dev/null 2>&1; }
# hdfs_current NAME: the running cluster has every control action the fault
# tests use (a GET of one answers 405, 404 when it is missing). Only the
# fault cluster is checked: the shared one never needs them, and restarting
# it would cut the tests of every other checkout using it.
hdfs_current() {
  [ "$1" = hdfs ] && return 0
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(hdfs_control_port "$1")/namenode/stop")" = 405 ]
}
start_hdfs_instance() {
  local name="$1" nn cp
  nn="$(hdfs_nn_port "$name")"; cp="$(hdfs_control_port "$name")"
  install_hdfs
  local dir="$STATE/$name" logf="$STATE/$name/minihdfs.log"
  if hdfs_ready "$name"; then
    hdfs_current "$name" && return 0
    log "$name: started from an older MiniHdfs (no /namenode/stop): restarting it"
  fi
  stop_hdfs_instance "$name"
  mkdir -p "$dir"
  rm -rf "$dir/data"
  log "$name: starting NameNode on 127.0.0.1:$nn (control $cp)"
  # setsid, and every descriptor redirected or closed: the cluster outlives
  # this script without holding the caller's pipes or svc.sh's lock.
  setsid java -Xmx1g -XX:+UseSerialGC \
    --add-opens java.base/java.lang=ALL-UNNAMED \
    --add-opens java.base/java.util=ALL-UNNAMED \
    --add-opens java.base/java.nio=ALL-UNNAMED \
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
    -Dlog4j.configuration="file:$HERE/hdfs/log4j.properties" \
    -cp "$HDFS_BUILD:$(cat "$HDFS_BUILD/classpath.txt")" \
    MiniHdfs "$dir/data" "$nn" "$cp" </dev/null >"$logf" 2>&1 9>&- &
  echo $! >"$dir/pid"
  # Ready: NameNode up, out of safe mode, a DataNode registered.
  wait_started "$name" "$logf" "$dir/pid" 180 hdfs_ready "$name"
}
stop_hdfs_instance() {
  local dir="$STATE/$1"
  pid_alive "$dir/pid" || return 0
  curl -fsS -X POST "http://127.0.0.1:$(hdfs_control_port "$1")/shutdown" >/dev/null 2>&1 || true
  wait_for 30 bash -c "! kill -0 $(cat "$dir/pid") 2>/dev/null" || kill -9 "$(cat "$dir/pid")" 2>/dev/null || true
  rm -f "$dir/pid"
}
status_hdfs() { hdfs_ready hdfs; }
start_hdfs() { start_hdfs_instance hdfs; }
stop_hdfs() { stop_hdfs_instance hdfs; }
env_hdfs() {
  echo "GAIA_TEST_HDFS_NAMENODE=127.0.0.1:$HDFS_NN_PORT"
  echo "GAIA_TEST_HDFS_CONTROL=http://127.0.0.1:$HDFS_CONTROL_PORT"
}
install_hdfs-faults() { install_hdfs; }
status_hdfs-faults() { hdfs_ready hdfs-faults; }
start_hdfs-faults() { start_hdfs_instance hdfs-faults; }
stop_hdfs-faults() { stop_hdfs_instance hdfs-faults; }
env_hdfs-faults() {
  echo "GAIA_TEST_HDFS_FAULTS_NAMENODE=127.0.0.1:$HDFS_FAULTS_NN_PORT"
  echo "GAIA_TEST_HDFS_FAULTS_CONTROL=http://127.0.0.1:$HDFS_FAULTS_CONTROL_PORT"
}

# ---------------------------------------------------------------- consul
CONSUL_BIN="$CACHE/consul-$CONSUL_VERSION/consul"
install_consul() {
  [ -x "$CONSUL_BIN" ] && return 0
  command -v go >/dev/null || die "consul: Go toolchain not found"
  # `go install github.com/hashicorp/consul@v` fails (replace directives in
  # its go.mod), so a throw-away wrapper module builds it.
  local src="$CACHE/consul-$CONSUL_VERSION/src"
  mkdir -p "$src"
  # consul v1.20.0 requires consul/troubleshoot v0.7.2, which the module
  # proxy refuses (403); v0.7.1 has the same API.
  printf 'module gaia-consul-build\n\ngo 1.26\n\nreplace github.com/hashicorp/consul/troubleshoot => github.com/hashicorp/consul/troubleshoot v0.7.1\n' >"$src/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/hashicorp/consul"\n' >"$src/tools.go"
  log "consul: building v$CONSUL_VERSION from the Go module proxy (first run only, ~5 min)"
  ( cd "$src" && go get "github.com/hashicorp/consul@v$CONSUL_VERSION" && go mod tidy \
      && go build -o "$CONSUL_BIN.tmp" github.com/hashicorp/consul && mv "$CONSUL_BIN.tmp" "$CONSUL_BIN" ) \
    >"$src/build.log" 2>&1 || fail_with_log consul "$src/build.log" "go build of consul failed"
}
consul_ready() {
  local leader
  leader="$(curl -fsS "http://127.0.0.1:$CONSUL_HTTP_PORT/v1/status/leader" 2>/dev/null)" || return 1
  [ -n "$leader" ] && [ "$leader" != '""' ]
}
status_consul() { consul_ready; }
# The flags a consul agent is started with; a running one whose stamp
# differs (or that has none: started by an older svc.sh, without DNS) is
# restarted by `start`.
consul_flags() {
  echo "-http-port $CONSUL_HTTP_PORT -dns-port $CONSUL_DNS_PORT -grpc-port -1 -grpc-tls-port -1" \
    "-server-port $((CONSUL_HTTP_PORT + 1)) -serf-lan-port $((CONSUL_HTTP_PORT + 2))" \
    "-serf-wan-port $((CONSUL_HTTP_PORT + 3))"
}
start_consul() {
  install_consul
  local dir="$STATE/consul" logf="$STATE/consul/consul.log"
  if status_consul; then
    [ "$(cat "$dir/flags" 2>/dev/null)" = "$(consul_flags)" ] && return 0
    log "consul: running with other flags than: $(consul_flags): restarting it"
    stop_consul
  fi
  pid_alive "$dir/pid" && kill "$(cat "$dir/pid")" 2>/dev/null || true
  mkdir -p "$dir"
  log "consul: starting dev agent on 127.0.0.1:$CONSUL_HTTP_PORT (DNS on $CONSUL_DNS_PORT)"
  # shellcheck disable=SC2046
  setsid "$CONSUL_BIN" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -node gaia-test \
    $(consul_flags) </dev/null >"$logf" 2>&1 9>&- &
  echo $! >"$dir/pid"
  consul_flags >"$dir/flags"
  wait_started consul "$logf" "$dir/pid" 60 consul_ready
}
stop_consul() { stop_pid "$STATE/consul/pid" 20; }
env_consul() {
  echo "GAIA_TEST_CONSUL_ADDR=127.0.0.1:$CONSUL_HTTP_PORT"
  echo "GAIA_TEST_CONSUL_DNS=127.0.0.1:$CONSUL_DNS_PORT"
  echo "GAIA_TEST_CONSUL_BIN=$CONSUL_BIN"
}

# ---------------------------------------------------------------- dockerd
# Containers get bridge networking with published ports (the node agent's
# instances): dockerd runs on a bridge of its own, made here, with
# docker-proxy doing the publishing (--iptables=false leaves the host's
# firewall alone), and its containers under a cgroup parent of its own, so a
# second dockerd (another GAIA_STATE_DIR, GAIA_DOCKER_BRIDGE,
# GAIA_DOCKER_BRIDGE_CIDR and GAIA_DOCKER_CGROUP_PARENT) can run beside it.
DOCKER_BRIDGE="${GAIA_DOCKER_BRIDGE:-gaia-br0}"
DOCKER_BRIDGE_CIDR="${GAIA_DOCKER_BRIDGE_CIDR:-172.29.0.1/24}"
DOCKER_CGROUP_PARENT="${GAIA_DOCKER_CGROUP_PARENT:-gaia-dockerd}"
install_dockerd() {
  # busybox-static is the root filesystem of the test images (tests/harness);
  # skopeo is the second real client the e2e tests drive; iproute2 makes
  # the bridge.
  apt_install docker.io busybox-static skopeo iproute2
}
dockerd_ready() { docker -H "unix://$DOCKER_SOCK" version >/dev/null 2>&1; }
# The flags a dockerd is started with; a running one whose stamp differs
# (or that has none: started by an older svc.sh, with --bridge=none) is
# restarted by `start`.
dockerd_flags() {
  echo "--storage-driver vfs --iptables=false --ip6tables=false --ip-masq=false" \
    "--bridge=$DOCKER_BRIDGE --cgroup-parent=$DOCKER_CGROUP_PARENT"
}
dockerd_current() {
  [ "$(cat "$STATE/dockerd/flags" 2>/dev/null)" = "$(dockerd_flags)" ] \
    && ip -br addr show dev "$DOCKER_BRIDGE" 2>/dev/null | grep -q "${DOCKER_BRIDGE_CIDR%/*}"
}
status_dockerd() { dockerd_ready; }
dockerd_bridge() {
  if ! ip link show dev "$DOCKER_BRIDGE" >/dev/null 2>&1; then
    ip link add "$DOCKER_BRIDGE" type bridge || die "dockerd: cannot create bridge $DOCKER_BRIDGE"
  fi
  # (checked again after a failed add: a dockerd stopping at the same
  # moment may have been taking it off or putting it back)
  ip addr show dev "$DOCKER_BRIDGE" | grep -q "inet ${DOCKER_BRIDGE_CIDR} " \
    || ip addr add "$DOCKER_BRIDGE_CIDR" dev "$DOCKER_BRIDGE" \
    || { sleep 1; ip addr show dev "$DOCKER_BRIDGE" | grep -q "inet ${DOCKER_BRIDGE_CIDR} "; } \
    || ip addr add "$DOCKER_BRIDGE_CIDR" dev "$DOCKER_BRIDGE" \
    || die "dockerd: cannot give $DOCKER_BRIDGE the address $DOCKER_BRIDGE_CIDR ($(ip -br addr show dev "$DOCKER_BRIDGE" 2>&1))"
  ip link set "$DOCKER_BRIDGE" up || die "dockerd: cannot bring $DOCKER_BRIDGE up"
}
start_dockerd() {
  install_dockerd
  [ "$(id -u)" -eq 0 ] || die "dockerd: must run as root"
  local dir="$STATE/dockerd" logf="$STATE/dockerd/dockerd.log"
  if status_dockerd; then
    dockerd_current && return 0
    log "dockerd: running with other flags than: $(dockerd_flags): restarting it"
  fi
  stop_dockerd
  mkdir -p "$dir/data" "$dir/exec"
  # Not running (checked above): a pid file is a leftover of a killed dockerd.
  rm -f "$dir/dockerd.pid"
  dockerd_bridge
  log "dockerd: starting on unix://$DOCKER_SOCK (vfs storage, bridge $DOCKER_BRIDGE $DOCKER_BRIDGE_CIDR)"
  # Loopback registries are insecure-allowed by default, so tests can push
  # to 127.0.0.1:PORT without TLS.
  # shellcheck disable=SC2046
  setsid dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    -H "unix://$DOCKER_SOCK" $(dockerd_flags) </dev/null >"$logf" 2>&1 9>&- &
  echo $! >"$dir/pid"
  dockerd_flags >"$dir/flags"
  wait_started dockerd "$logf" "$dir/pid" 60 dockerd_ready
}
stop_dockerd() { stop_pid "$STATE/dockerd/pid" 30; }
env_dockerd() {
  echo "GAIA_TEST_DOCKER_HOST=unix://$DOCKER_SOCK"
}

# ---------------------------------------------------------------- slapd
# Our own slapd (its own slapd.conf, data and port), never the package's
# system instance: that one is kept from starting at install, and would
# listen on 389 anyway.
LDAP_BASE="dc=gaia,dc=test"
LDAP_ADMIN_DN="cn=admin,$LDAP_BASE"
LDAP_ADMIN_PASSWORD="gaia-ldap-admin"
LDAP_URL="ldap://127.0.0.1:$LDAP_PORT"
install_slapd() {
  [ -x /usr/sbin/slapd ] && command -v ldapsearch >/dev/null && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Without configuration the package makes no database of its own, and a
  # policy-rc.d that denies keeps its postinst from starting the system
  # slapd (there is no systemd here to ask); one already present (Docker
  # images ship one) is left alone.
  echo "slapd slapd/no_configuration boolean true" | $sudo debconf-set-selections
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
  fi
  local rc=0
  ( apt_install slapd ldap-utils ) || rc=$?
  [ -z "$policy" ] || $sudo rm -f "$policy"
  [ "$rc" -eq 0 ] || exit "$rc"
}
slapd_whoami() {
  ldapwhoami -x -H "$LDAP_URL" -D "$LDAP_ADMIN_DN" -w "$LDAP_ADMIN_PASSWORD"
}
# Healthy: answering binds, and seeded (ou=groups is the last entry added).
status_slapd() {
  command -v ldapsearch >/dev/null || return 1
  ldapsearch -x -LLL -H "$LDAP_URL" -D "$LDAP_ADMIN_DN" -w "$LDAP_ADMIN_PASSWORD" \
    -b "ou=groups,$LDAP_BASE" -s base dn >/dev/null 2>&1
}
slapd_conf() {
  local dir="$1"
  cat <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $dir/slapd.pid
argsfile $dir/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
# Users bind as themselves; nobody reads a password hash.
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
database mdb
maxsize 268435456
suffix "$LDAP_BASE"
rootdn "$LDAP_ADMIN_DN"
rootpw $LDAP_ADMIN_PASSWORD
directory $dir/data
index objectClass eq
index uid,cn eq
index member,uniqueMember,memberUid eq
EOF
}
start_slapd() {
  install_slapd
  local dir="$STATE/slapd" logf="$STATE/slapd/slapd.log"
  status_slapd && return 0
  stop_slapd
  mkdir -p "$dir/data"
  slapd_conf "$dir" >"$dir/slapd.conf"
  slaptest -u -f "$dir/slapd.conf" >"$logf" 2>&1 || fail_with_log slapd "$logf" "slaptest rejects $dir/slapd.conf"
  log "slapd: starting on $LDAP_URL (base $LDAP_BASE)"
  # -d keeps it in the foreground (logging connections and operations to
  # the log) under setsid, like the other services.
  setsid /usr/sbin/slapd -d stats -f "$dir/slapd.conf" -h "$LDAP_URL/" </dev/null >>"$logf" 2>&1 9>&- &
  echo $! >"$dir/pid"
  wait_started slapd "$logf" "$dir/pid" 30 slapd_whoami
  # Seed what is missing (-c: an entry left by an earlier start is "already
  # exists"); healthy only once ou=groups is there.
  ldapadd -c -x -H "$LDAP_URL" -D "$LDAP_ADMIN_DN" -w "$LDAP_ADMIN_PASSWORD" >>"$logf" 2>&1 <<EOF || true
dn: $LDAP_BASE
objectClass: dcObject
objectClass: organization
dc: gaia
o: Gaia tests

dn: ou=people,$LDAP_BASE
objectClass: organizationalUnit
ou: people

dn: ou=groups,$LDAP_BASE
objectClass: organizationalUnit
ou: groups
EOF
  status_slapd || fail_with_log slapd "$logf" "seeding $LDAP_BASE failed"
}
stop_slapd() { stop_pid "$STATE/slapd/pid" 20; }
env_slapd() {
  echo "GAIA_TEST_LDAP_URL=$LDAP_URL"
  echo "GAIA_TEST_LDAP_BASE=$LDAP_BASE"
  echo "GAIA_TEST_LDAP_ADMIN_DN=$LDAP_ADMIN_DN"
  echo "GAIA_TEST_LDAP_ADMIN_PASSWORD=$LDAP_ADMIN_PASSWORD"
}

# ---------------------------------------------------------------- main
usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

[ $# -ge 2 ] || usage
cmd="$1"; shift
services=("$@")
[ "${services[0]}" = "all" ] && services=("${ALL_SERVICES[@]}")
for s in "${services[@]}"; do
  case " ${ALL_SERVICES[*]} " in *" $s "*) ;; *) die "unknown service '$s' (known: ${ALL_SERVICES[*]})";; esac
done

base_tools

# One svc.sh at a time per state dir: concurrent test packages may all ask
# for the same service.
case "$cmd" in
  install|start|stop)
    exec 9>"$STATE/.lock"
    flock 9
    ;;
esac

for s in "${services[@]}"; do
  case "$cmd" in
    install) "install_$s" ;;
    start) "start_$s" ;;
    stop) "stop_$s" ;;
    status)
      if "status_$s"; then echo "$s: up"; else echo "$s: down"; fi ;;
    env) "env_$s" ;;
    logs)
      for f in "$STATE/$s"/*.log; do [ -f "$f" ] && { echo "== $f"; tail -n 100 "$f"; }; done ;;
    *) usage ;;
  esac
done
