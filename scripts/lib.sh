# shellcheck shell=bash
# Shared helpers for scripts/test.sh and scripts/demo.sh. Sourcing runs nothing.
#
# The caller sets `set -euo pipefail` and cds to the repository root first:
# every path here is relative to it.

# What the tests and the demo need from Debian: the registry server (also the
# demo's source of the registry:2 binary), skopeo and umoci to cross-check
# images, zstd, htpasswd (apache2-utils) for registries with auth, Docker for
# --load and --start-registry, a static busybox for test images, CA certificates.
# shellcheck disable=SC2034  # read by the scripts that source this file
AIRGAP_APT_PACKAGES=(
    docker-registry skopeo umoci zstd apache2-utils docker.io busybox-static
    ca-certificates
)
AIRGAP_VENV=.venv
AIRGAP_VENV_STAMP=$AIRGAP_VENV/.airgap-install-stamp

log() {
    printf '%s: %s\n' "${LOG_NAME:-airgap}" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# section TITLE: a header between the parts of a long run, easy to spot in a log.
section() {
    printf '\n%s: === %s ===\n' "${LOG_NAME:-airgap}" "$*" >&2
}

# Runs a command as root: directly when we are root (CI), else through sudo.
as_root() {
    if ((EUID == 0)); then
        "$@"
    else
        sudo "$@"
    fi
}

# apt-get without questions, and without needrestart's prompt after installs.
apt_get() {
    as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
        apt-get -y -qq "$@"
}

# Prints, one a line, the packages among "$@" that are not installed.
apt_missing() {
    local pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        if [[ $status != installed ]]; then
            printf '%s\n' "$pkg"
        fi
    done
}

# Installs the missing ones of "$@"; the package lists are refreshed only then.
ensure_apt_packages() {
    local missing
    mapfile -t missing < <(apt_missing "$@")
    if ((${#missing[@]} == 0)); then
        return 0
    fi

    log "installing Debian packages: ${missing[*]}"
    apt_get update
    apt_get install "${missing[@]}"
}

# What the editable install depends on: when this changes, pip runs again.
install_fingerprint() {
    {
        "$AIRGAP_VENV/bin/python" --version
        cat setup.cfg pyproject.toml
    } 2>&1 | sha256sum | cut -d' ' -f1
}

# Creates .venv when it is missing or broken, and installs the package with its
# test extras unless the stamp says this setup.cfg is installed already.
ensure_venv() {
    if ! "$AIRGAP_VENV/bin/python" -c '' 2>/dev/null; then
        log "creating $AIRGAP_VENV"
        rm -rf "$AIRGAP_VENV"
        "${PYTHON:-python3}" -m venv "$AIRGAP_VENV"
    fi

    local want
    want=$(install_fingerprint)
    if [[ -x $AIRGAP_VENV/bin/airgap && -f $AIRGAP_VENV_STAMP &&
        $(<"$AIRGAP_VENV_STAMP") == "$want" ]]; then
        return 0
    fi

    log "installing airgap and its test tools into $AIRGAP_VENV"
    rm -f "$AIRGAP_VENV_STAMP"
    "$AIRGAP_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -e '.[test]'
    printf '%s\n' "$want" >"$AIRGAP_VENV_STAMP"
}

# Puts the venv's tools (airgap, pytest, ruff, mypy) first on PATH.
activate_venv() {
    PATH="$PWD/$AIRGAP_VENV/bin:$PATH"
    export PATH
}

# Prints a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# Registries started by start_registry, stopped by stop_registries.
REGISTRY_PIDS=()

# start_registry NAME DIR: runs docker-registry on a free loopback port, storing
# under DIR (absolute, or relative to the repository root), and waits until /v2/
# answers. Sets REGISTRY_ADDR to HOST:PORT.
start_registry() {
    local name=$1 dir=$2 port
    [[ $dir == /* ]] || dir=$PWD/$dir
    port=$(free_port)
    mkdir -p "$dir/storage"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF

    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    REGISTRY_PIDS+=("$!")
    REGISTRY_ADDR=127.0.0.1:$port
    wait_for_registry "$name" "$!" "$REGISTRY_ADDR" "$dir/registry.log"
}

# wait_for_registry NAME PID HOST:PORT LOG: up to 10 s for /v2/ to answer.
wait_for_registry() {
    local name=$1 pid=$2 addr=$3 logfile=$4 try
    for try in $(seq 100); do
        if curl -fsS --noproxy '*' -o /dev/null "http://$addr/v2/" 2>/dev/null; then
            log "registry $name is up at $addr (pid $pid)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "registry $name exited before answering at $addr"
        fi
        sleep 0.1
    done
    die "registry $name did not answer at http://$addr/v2/ within 10 s (try $try)"
}

# Stops the registries this script started, and only those.
stop_registries() {
    local pid
    for pid in "${REGISTRY_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    REGISTRY_PIDS=()
}

# A dockerd of our own, started by start_dockerd, stopped by stop_dockerd.
DOCKERD_ROOT=
DOCKERD_PID=

# start_dockerd: runs dockerd as tests/servers.py does, with its own data root,
# exec root and socket, no bridge and no iptables, so neither the host's Docker
# nor its network is touched. The tree sits in /tmp under a short name because a
# unix socket path is limited to ~108 bytes. Exports DOCKER_HOST; needs root.
start_dockerd() {
    local sock try
    DOCKERD_ROOT=$(mktemp -d /tmp/agd.XXXXXX)
    sock=$DOCKERD_ROOT/docker.sock
    dockerd --data-root="$DOCKERD_ROOT/data" --exec-root="$DOCKERD_ROOT/e" \
        --pidfile="$DOCKERD_ROOT/dockerd.pid" -H "unix://$sock" \
        --iptables=false --bridge=none --storage-driver=vfs \
        </dev/null >"$DOCKERD_ROOT/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    export DOCKER_HOST=unix://$sock

    for try in $(seq 300); do
        if docker info >/dev/null 2>&1; then
            log "private dockerd is up at $DOCKER_HOST (pid $DOCKERD_PID)"
            return 0
        fi
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            tail -n 20 "$DOCKERD_ROOT/dockerd.log" >&2 || true
            die "dockerd exited before answering at $DOCKER_HOST"
        fi
        sleep 0.2
    done
    tail -n 20 "$DOCKERD_ROOT/dockerd.log" >&2 || true
    die "dockerd did not answer at $DOCKER_HOST within 60 s (try $try)"
}

# Stops the dockerd start_dockerd started (SIGTERM, SIGKILL after 30 s), undoes
# the mounts it leaves behind (its netns survives even a clean exit) and removes
# its tree.
stop_dockerd() {
    local try
    [[ -n $DOCKERD_PID ]] || return 0
    kill "$DOCKERD_PID" 2>/dev/null || true
    for try in $(seq 150); do
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
        log "dockerd (pid $DOCKERD_PID) still runs after $try tries; killing it"
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    fi
    wait "$DOCKERD_PID" 2>/dev/null || true

    unmount_under "$DOCKERD_ROOT"
    rm -rf --one-file-system "$DOCKERD_ROOT"
    DOCKERD_PID=
    DOCKERD_ROOT=
}

# unmount_under DIR: lazily unmounts every mount point below DIR, innermost
# (mounted last) first.
unmount_under() {
    local point
    awk -v root="$1/" 'index($2, root) == 1 { print $2 }' /proc/self/mounts |
        tac | while read -r point; do
        umount -l "$point" 2>/dev/null || true
    done
}
