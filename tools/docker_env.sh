#!/usr/bin/env bash
# A private Docker engine and a local base image for building and testing the lnassist image on a
# machine without a reachable image registry (CI and development machines like it). Needs root.
#
#   tools/docker_env.sh up          install docker.io + debootstrap if missing, start our dockerd,
#                                   make the base image (debootstrap bookworm, cached as a tarball)
#   tools/docker_env.sh build TAG [docker build options...]
#                                   up, then build ./Dockerfile as TAG on the base image; pip gets the
#                                   host's local wheels over HTTP on 127.0.0.1 and the host's CA
#                                   certificates (TLS proxy), everything else from PyPI
#   tools/docker_env.sh docker ARGS...   the docker CLI pointed at our daemon
#   tools/docker_env.sh env         print `export DOCKER_HOST=...` (eval "$(tools/docker_env.sh env)")
#   tools/docker_env.sh running     exit status 0 when our daemon answers
#   tools/docker_env.sh stop        stop our daemon (images and the layer cache stay on disk)
#   tools/docker_env.sh purge       stop it and delete everything under $LNASSIST_DOCKER_DIR
#
# Everything is idempotent and reused between runs on the same machine: a running daemon, the
# images and build cache in its data root, the base image tarball. Settings (environment):
#   LNASSIST_DOCKER_DIR    state folder (data root, exec root, socket, log, base tarball)
#                          [/var/tmp/lnassist-docker]
#   LNASSIST_BASE_IMAGE    name of the local base image [lnassist-test-base:bookworm]
#   LNASSIST_DEBIAN_MIRROR Debian mirror for debootstrap [the host's apt source, else deb.debian.org]
#   LNASSIST_WHEEL_PORT    port of the wheel server during builds [38471; a fixed port keeps the
#                          build arguments, hence the layer cache, the same from run to run]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${LNASSIST_DOCKER_DIR:-/var/tmp/lnassist-docker}"
SOCK="$STATE/docker.sock"
export DOCKER_HOST="unix://$SOCK"
BASE_IMAGE="${LNASSIST_BASE_IMAGE:-lnassist-test-base:bookworm}"
SUITE=bookworm
BASE_TAR="$STATE/base-$SUITE.tar"
WHEEL_PORT="${LNASSIST_WHEEL_PORT:-38471}"
PYTHON="${PYTHON:-python3}"

log() { echo "docker_env: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

docker_cli() {
    # Debian's CLI matches Debian's daemon; any other docker CLI negotiates the API version down.
    if [ -x /usr/bin/docker ]; then /usr/bin/docker "$@"; else docker "$@"; fi
}

running() { [ -S "$SOCK" ] && docker_cli version >/dev/null 2>&1; }

install_engine() {
    if command -v dockerd >/dev/null && command -v debootstrap >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "docker.io / debootstrap are not installed and this is not root"
    command -v apt-get >/dev/null || die "docker.io / debootstrap are not installed and there is no apt-get"
    log "installing docker.io and debootstrap with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends docker.io debootstrap >"$STATE/apt.log" 2>&1; then
        apt-get update -q >>"$STATE/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends docker.io debootstrap >>"$STATE/apt.log" 2>&1 \
            || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install docker.io debootstrap failed"; }
    fi
}

start_daemon() {
    running && return
    [ "$(id -u)" = 0 ] || die "dockerd needs root"
    if [ -f "$STATE/dockerd.pid" ] && kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null; then
        log "dockerd (pid $(cat "$STATE/dockerd.pid")) is running but does not answer yet; waiting"
    else
        rm -f "$SOCK" "$STATE/dockerd.pid"
        log "starting dockerd (data root $STATE/data, log $STATE/dockerd.log)"
        # No bridge, no iptables: builds use --network host, test containers --network none.
        setsid dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
            -H "unix://$SOCK" --bridge=none --iptables=false \
            >>"$STATE/dockerd.log" 2>&1 </dev/null &
    fi
    for _ in $(seq 120); do
        running && break
        sleep 0.5
    done
    running || { tail -n 30 "$STATE/dockerd.log" >&2; die "dockerd did not start (log: $STATE/dockerd.log)"; }
    local driver
    driver="$(docker_cli info --format '{{.Driver}}' 2>/dev/null || true)"
    [ "$driver" = overlay2 ] || log "WARNING: storage driver is '$driver', not overlay2: builds will be slow and big"
}

debian_mirror() {
    if [ -n "${LNASSIST_DEBIAN_MIRROR:-}" ]; then echo "$LNASSIST_DEBIAN_MIRROR"; return; fi
    local uri
    uri="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
        | grep -v -e security -e '^https\?://[^/]*google' -e nodesource | head -n 1 || true)"
    [ -n "$uri" ] || uri="$(grep -hs '^deb ' /etc/apt/sources.list | awk '$3 == "'$SUITE'" {print $2}' | head -n 1 || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}

base_image() {
    docker_cli image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return
    if [ ! -s "$BASE_TAR" ]; then
        local rootfs="$STATE/rootfs.tmp" mirror
        mirror="$(debian_mirror)"
        rm -rf "$rootfs"
        log "debootstrap $SUITE from $mirror (about a minute)"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
            || { tail -n 20 "$STATE/debootstrap.log" >&2; die "debootstrap failed (log: $STATE/debootstrap.log)"; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.tmp" .
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$rootfs"
    fi
    log "importing $BASE_TAR as $BASE_IMAGE"
    docker_cli import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" <"$BASE_TAR" >/dev/null
}

up() {
    mkdir -p "$STATE"
    install_engine
    start_daemon
    base_image
}

free_port() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
port = int(sys.argv[1])
for candidate in range(port, port + 50):
    with socket.socket() as s:
        # As http.server binds: connections of the previous build in TIME_WAIT do not block the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        print(candidate)
        break
EOF
}

build() {
    [ $# -ge 1 ] || die "usage: $0 build TAG [docker build options...]"
    local tag="$1"
    shift
    up
    local serve="$STATE/serve" port extra
    mkdir -p "$serve"
    extra="$("$PYTHON" "$REPO/tools/local_wheels.py" "$serve/wheels")"
    local build_args=()
    rm -f "$serve/ca.crt"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        # The host's extra CAs (e.g. a TLS-inspecting proxy's): pip in the build must trust them too.
        cat /usr/local/share/ca-certificates/*.crt >"$serve/ca.crt"
        extra="$extra --cert /etc/ssl/certs/ca-certificates.crt"
    fi
    port="$(free_port "$WHEEL_PORT")"
    [ -n "$port" ] || die "no free port near $WHEEL_PORT for the wheel server"
    [ "$port" = "$WHEEL_PORT" ] || log "port $WHEEL_PORT is taken: serving wheels on $port (no layer cache)"
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$serve" "$port" >"$STATE/wheel-server.log" 2>&1 &
    SERVER_PID=$!
    trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
    for _ in $(seq 50); do
        "$PYTHON" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/wheels/', timeout=2)" \
            2>/dev/null && break
        sleep 0.2
    done
    build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    build_args+=(--build-arg "PIP_EXTRA_ARGS=--find-links http://127.0.0.1:$port/wheels/ $extra")
    [ -f "$serve/ca.crt" ] && build_args+=(--build-arg "EXTRA_CA_URL=http://127.0.0.1:$port/ca.crt")
    log "building $tag on $BASE_IMAGE (wheels from http://127.0.0.1:$port/wheels/)"
    local start=$SECONDS previous
    previous="$(docker_cli image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
    DOCKER_BUILDKIT=0 docker_cli build --network host --force-rm "${build_args[@]}" -t "$tag" "$@" "$REPO"
    log "built $tag in $((SECONDS - start)) s ($(docker_cli image inspect --format '{{.Size}}' "$tag" \
        | awk '{printf "%.2f GB", $1 / 1e9}'))"
    # The previous build of the tag, now untagged, and its layers that nothing else uses: without
    # this they pile up run after run. (No `image prune`: it would also delete the untagged image
    # of the sdist-wheels stage, which is the build cache of that stage.)
    if [ -n "$previous" ] && [ "$previous" != "$(docker_cli image inspect --format '{{.Id}}' "$tag")" ]; then
        docker_cli rmi "$previous" >/dev/null 2>&1 || true
    fi
}

stop() {
    if [ -f "$STATE/dockerd.pid" ]; then
        local pid
        pid="$(cat "$STATE/dockerd.pid")"
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping dockerd (pid $pid)"
            kill "$pid"
            for _ in $(seq 60); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.5
            done
            if kill -0 "$pid" 2>/dev/null; then die "dockerd (pid $pid) did not stop"; fi
        fi
        rm -f "$STATE/dockerd.pid"
    fi
    rm -f "$SOCK"
    if mountpoint -q "$STATE/exec/netns/default" 2>/dev/null; then
        umount "$STATE/exec/netns/default" || true
    fi
}

purge() {
    stop
    # Mounts left behind by a killed daemon must go before the folders.
    local mounts
    mounts="$(awk -v dir="$STATE/" 'index($2, dir) == 1 || $2 == substr(dir, 1, length(dir) - 1) {print $2}' \
        /proc/mounts | sort -r)"
    for mnt in $mounts; do umount "$mnt" || true; done
    rm -rf "$STATE"
    log "deleted $STATE"
}

case "${1:-}" in
    up) up ;;
    build) shift; build "$@" ;;
    docker) shift; docker_cli "$@" ;;
    env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
    running) running ;;
    stop) stop ;;
    purge) purge ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
esac
