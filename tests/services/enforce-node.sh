#!/usr/bin/env bash
# enforce-node.sh starts (idempotently) the node-enforcement tests' own
# dockerd (nodeagent/enforce): its own data root, exec root, pid file,
# socket, bridge (gxbr0, 10.213.0.1/24) and default cgroup parent, so it
# never shares /sys/fs/cgroup/*/docker or a bridge with svc.sh's dockerd,
# which other packages' tests use. It installs what the tests need
# (docker.io, busybox-static, iperf3, e2fsprogs, util-linux) with svc.sh's
# apt pattern. Usage: enforce-node.sh start|stop|env
set -euo pipefail
CACHE="${GAIA_CACHE_DIR:-$HOME/.cache/gaia}"
STATE="${GAIA_ENFORCE_STATE_DIR:-/tmp/gaia-enforce}"
SOCK="$STATE/docker.sock"
BRIDGE="${GAIA_ENFORCE_BRIDGE:-gxbr0}"
BRIDGE_CIDR="${GAIA_ENFORCE_BRIDGE_CIDR:-10.213.0.1/24}"
mkdir -p "$CACHE" "$STATE"
log() { echo "enforce-node: $*" >&2; }
die() { echo "enforce-node: ERROR: $*" >&2; exit 1; }

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "need Debian packages ${missing[*]} but apt-get is not available"
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq >"$CACHE/apt-enforce.log" 2>&1 || { tail -20 "$CACHE/apt-enforce.log" >&2; die "apt-get update failed"; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >>"$CACHE/apt-enforce.log" 2>&1 \
    || { tail -20 "$CACHE/apt-enforce.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

ready() { docker -H "unix://$SOCK" version >/dev/null 2>&1; }

start() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (cgroups, tc, loop devices)"
  exec 9>"$STATE/.lock"
  flock 9   # test packages run at once: one install and one start
  apt_install docker.io busybox-static iperf3 e2fsprogs util-linux iproute2
  ready && return 0
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  if [ -f "$STATE/dockerd.pid" ] && kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null; then
    kill "$(cat "$STATE/dockerd.pid")" || true
    sleep 2
  fi
  rm -f "$STATE/dockerd.pid"
  mkdir -p "$STATE/data" "$STATE/exec"
  log "dockerd on unix://$SOCK, bridge $BRIDGE, cgroup parent gaia-enforce-dockerd"
  setsid dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
    -H "unix://$SOCK" --storage-driver vfs --iptables=false --ip6tables=false --ip-masq=false \
    --bridge="$BRIDGE" --cgroup-parent=gaia-enforce-dockerd </dev/null >"$STATE/dockerd.log" 2>&1 9>&- &
  for _ in $(seq 1 120); do
    ready && return 0
    sleep 0.5
  done
  tail -30 "$STATE/dockerd.log" >&2
  die "dockerd did not start"
}

stop() {
  if [ -f "$STATE/dockerd.pid" ] && kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null; then
    kill "$(cat "$STATE/dockerd.pid")"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "GAIA_ENFORCE_DOCKER_HOST=unix://$SOCK" ;;
  *) die "usage: $0 start|stop|env" ;;
esac
