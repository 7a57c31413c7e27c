# shellcheck shell=bash
# Shared helpers for the librdkafka compatibility harness and benches/compare.sh.
# Source this file; it defines functions only (plus a few variables).
#
# Everything third-party is obtained from registries (npm, Debian) and built
# under the cache directory, never inside the repository:
#   $SHALE_CACHE_DIR (default: $HOME/.cache/shale)
# The default is outside the work tree on purpose: CI runs in a fresh clone
# each time, and a cache inside the clone would be rebuilt on every run.
# Set SHALE_CACHE_DIR=$PWD/.cache to keep it in the (gitignored) repo .cache.

RDK_VERSION=2.15.1
RDK_NPM_PKG="@confluentinc/kafka-javascript@1.10.1"   # ships librdkafka 2.15.1 + tests
RDK_CONFIGURE_OPTS="--no-download --disable-gssapi --disable-curl --disable-lz4-ext --disable-debug-symbols --disable-syslog"
# Bump when the build recipe changes so cached builds are redone.
RDK_BUILD_ID="rdk-${RDK_VERSION}-r3 ${RDK_CONFIGURE_OPTS}"

SHALE_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
SHALE_CACHE_DIR="${SHALE_CACHE_DIR:-${HOME:-/root}/.cache/shale}"
RDK_DIR="$SHALE_CACHE_DIR/librdkafka-$RDK_VERSION"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

nproc_() { nproc 2>/dev/null || echo 2; }

# Install missing Debian packages (as root, or through sudo when available).
ensure_debs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo=(sudo -n)
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        "${sudo[@]}" apt-get update -q >/dev/null 2>&1 || true
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# Build deps for the configuration in RDK_CONFIGURE_OPTS (no SASL/GSSAPI, no
# curl, builtin lz4): a C/C++ toolchain, zlib, zstd and OpenSSL (test 0064
# sets security.protocol=ssl on a client conf); RapidJSON (headers only) lets
# the tests that verify statistics JSON (0053, 0098, 0101, 0110) run.
ensure_build_deps() {
    ensure_debs build-essential zlib1g-dev libzstd-dev libssl-dev rapidjson-dev
    command -v npm >/dev/null || ensure_debs npm
}

# Download an npm package tarball into the cache (once); prints its path.
npm_tarball() {
    local spec="$1" dest="$SHALE_CACHE_DIR/npm"
    local name="${spec%@*}" ver="${spec##*@}"
    local file="$dest/$(echo "${name#@}" | tr '/' '-')-$ver.tgz"
    if [ ! -s "$file" ]; then
        mkdir -p "$dest"
        log "npm pack $spec"
        local tmp; tmp="$(mktemp -d "$dest/.pack.XXXXXX")"
        (cd "$tmp" && npm pack --silent "$spec" >/dev/null) || { rm -rf "$tmp"; die "npm pack $spec failed"; }
        mv "$tmp"/*.tgz "$file" && rm -rf "$tmp"
    fi
    echo "$file"
}

# Build librdkafka (libs + test-runner) once per version; cached in $RDK_DIR.
# Concurrent callers serialise on a lock file.
ensure_librdkafka() {
    mkdir -p "$SHALE_CACHE_DIR"
    exec 9>"$SHALE_CACHE_DIR/.librdkafka-$RDK_VERSION.lock"
    flock 9
    if [ -f "$RDK_DIR/.shale-built" ] && [ "$(cat "$RDK_DIR/.shale-built")" = "$RDK_BUILD_ID" ]; then
        flock -u 9; return 0
    fi
    ensure_build_deps
    local tgz; tgz="$(npm_tarball "$RDK_NPM_PKG")"
    # Built next to the live tree and swapped in at the end, so a run that is
    # using an older build is not pulled from under its feet.
    local tmp="$RDK_DIR.tmp"
    rm -rf "$tmp"; mkdir -p "$tmp"
    log "extracting librdkafka $RDK_VERSION from $(basename "$tgz")"
    tar -xzf "$tgz" -C "$tmp" --strip-components=3 package/deps/librdkafka
    grep -q "RD_KAFKA_VERSION *0x020f01ff" "$tmp/src/rdkafka.h" || die "unexpected librdkafka version in $tgz"
    local t0=$SECONDS j; j="$(nproc_)"
    log "building librdkafka $RDK_VERSION (configure $RDK_CONFIGURE_OPTS; make libs; make -C tests build) ..."
    # shellcheck disable=SC2086  # word splitting of the options is intended
    (
        cd "$tmp" &&
        ./configure $RDK_CONFIGURE_OPTS &&
        make -j"$j" libs &&
        make -j"$j" -C tests build
    ) >"$SHALE_CACHE_DIR/librdkafka-build.log" 2>&1 \
        || { tail -30 "$SHALE_CACHE_DIR/librdkafka-build.log" >&2; die "librdkafka build failed (log: $SHALE_CACHE_DIR/librdkafka-build.log)"; }
    # Installed-layout headers for our own programs (<librdkafka/rdkafka.h>).
    mkdir -p "$tmp/include/librdkafka"
    cp "$tmp"/src/rdkafka.h "$tmp"/src/rdkafka_mock.h "$tmp"/src-cpp/rdkafkacpp.h "$tmp/include/librdkafka/"
    echo "$RDK_BUILD_ID" >"$tmp/.shale-built"
    rm -rf "$RDK_DIR.old"
    [ -d "$RDK_DIR" ] && mv "$RDK_DIR" "$RDK_DIR.old"
    mv "$tmp" "$RDK_DIR"
    rm -rf "$RDK_DIR.old"
    log "librdkafka built in $((SECONDS - t0))s -> $RDK_DIR"
    flock -u 9
}

# Compile a C program against the cached librdkafka (rpath, no install).
rdk_cc() { # rdk_cc OUT SRC...
    local out="$1"; shift
    gcc -O2 -Wall -o "$out" "$@" -I"$RDK_DIR/include" -I"$RDK_DIR/src" \
        -L"$RDK_DIR/src" -Wl,-rpath,"$RDK_DIR/src" -lrdkafka -lpthread -lm
}

# Path of the shale binary; builds the release binary when missing.
ensure_shale() {
    if [ -n "${SHALE_BIN:-}" ]; then
        [ -x "$SHALE_BIN" ] || die "SHALE_BIN=$SHALE_BIN is not executable"
        echo "$SHALE_BIN"; return
    fi
    local bin="$SHALE_REPO_ROOT/target/release/shale"
    if [ ! -x "$bin" ]; then
        log "building shale (cargo build --release -p shale)"
        (cd "$SHALE_REPO_ROOT" && cargo build --release -q -p shale) >&2 || die "cargo build --release -p shale failed"
    fi
    echo "$bin"
}

# A TCP port that is free on 127.0.0.1 right now, taken below the kernel's
# ephemeral range: a port above it can be the local end of some client's
# connection, and then the broker's bind fails with "Address already in use".
free_port() {
    local p lo=32768
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    [ "$lo" -gt 11000 ] || lo=32768
    for _ in $(seq 1 200); do
        p=$(( 10000 + (RANDOM * 32768 + RANDOM) % (lo - 10000) ))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    die "no free port found"
}

# wait_port PORT SECONDS: until something accepts on 127.0.0.1:PORT.
wait_port() {
    local port="$1" secs="${2:-30}" i
    for i in $(seq 1 $((secs * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# start_shale DATA_DIR PORT LOG: starts `shale dev`, sets SHALE_PID; waits
# for the "bootstrap:" line (or the port) up to 60 s.
start_shale() {
    local data="$1" port="$2" logf="$3" bin
    bin="$(ensure_shale)"
    mkdir -p "$data"
    "$bin" dev --data-dir "$data" --port "$port" >"$logf" 2>&1 &
    SHALE_PID=$!
    local i
    for i in $(seq 1 600); do
        if ! kill -0 "$SHALE_PID" 2>/dev/null; then
            # The error itself, without the backtrace frames that follow it.
            log "shale exited during start-up:"
            grep -Ev '^ +([0-9]+: |at )' "$logf" | tail -20 >&2; return 1
        fi
        if grep -q '^bootstrap: ' "$logf" 2>/dev/null || { [ "$i" -gt 20 ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }; then
            return 0
        fi
        sleep 0.1
    done
    log "shale did not become ready in 60 s"; return 1
}

# stop_pid PID: SIGTERM, then SIGKILL after 10 s. Only the given pid.
stop_pid() {
    local pid="$1" i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    return 0
}

# Build benches/mock/mock_cluster against the cached librdkafka; prints path.
ensure_mock_cluster() {
    local out="$SHALE_CACHE_DIR/bin/mock_cluster" src="$SHALE_REPO_ROOT/benches/mock/mock_cluster.c"
    mkdir -p "$SHALE_CACHE_DIR/bin"
    if [ ! -x "$out" ] || [ "$src" -nt "$out" ] || [ "$RDK_DIR/.shale-built" -nt "$out" ]; then
        rdk_cc "$out" "$src" >&2 || die "building mock_cluster failed"
    fi
    echo "$out"
}

# start_mock LOG [mock_cluster args...]: sets MOCK_PID and MOCK_BOOTSTRAP.
start_mock() {
    local logf="$1"; shift
    local bin; bin="$(ensure_mock_cluster)"
    "$bin" "$@" >"$logf" 2>&1 &
    MOCK_PID=$!
    local i
    for i in $(seq 1 100); do
        MOCK_BOOTSTRAP="$(sed -n 's/^bootstrap: //p' "$logf" 2>/dev/null | head -1)"
        [ -n "$MOCK_BOOTSTRAP" ] && return 0
        kill -0 "$MOCK_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "mock_cluster failed to start:"; cat "$logf" >&2; return 1
}
