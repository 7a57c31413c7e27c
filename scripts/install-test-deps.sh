#!/usr/bin/env bash
# Installs what the test suite needs, and only what is missing (safe to run again):
#   PyPI:   moto[server] (a real S3 server), confluent-kafka, kafka-python, pytest, pytest-timeout
#   Debian: kcat (librdkafka 2.0.2: old protocol versions), nodejs + npm when absent
#   npm:    tests/js (kafkajs, pinned in tests/js/package.json + package-lock.json)
#   Maven:  tests/java (kafka-clients + kafka-streams, pinned in tests/java/pom.xml) and
#           tests/java/tools (Apache Kafka's command-line tools: kafka-tools + kafka_2.13, the
#           classpath of tests/e2e/test_kafka_cli.py), built with `mvn -q -B package` when java
#           and mvn are on PATH; with SHALE_TEST_BROKER=kafka also tests/java/reference (the
#           Apache Kafka broker the client tests are checked against)
# Everything comes from the registries by package name; nothing is vendored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

# Pinned Python packages: distribution name, version, pip requirement.
PY_PINS=(
    "moto 5.2.5 moto[server]==5.2.5"
    "confluent-kafka 2.16.1 confluent-kafka==2.16.1"
    "kafka-python 3.0.12 kafka-python==3.0.12"
    "pytest 9.2.0 pytest==9.2.0"
    "pytest-timeout 2.4.0 pytest-timeout==2.4.0"
)
DEBS=(kcat)

log() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
t_total=$SECONDS

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@"
    else log "need root for: $*"; return 1
    fi
}

# ---- Python ---------------------------------------------------------------------------
t=$SECONDS
command -v "$PYTHON" >/dev/null || { log "no $PYTHON on PATH"; exit 1; }
# One interpreter start: print each requirement whose pinned version is not installed.
missing=()
while IFS= read -r req; do
    [ -n "$req" ] && missing+=("$req")
done < <("$PYTHON" - "${PY_PINS[@]}" <<'EOF'
import sys, importlib.metadata as m, importlib.util as u
for pin in sys.argv[1:]:
    dist, ver, req = pin.split()
    try:
        ok = m.version(dist) == ver
    except m.PackageNotFoundError:
        ok = False
    # moto[server] also needs its extras (flask, flask-cors) importable.
    if ok and dist == "moto":
        ok = all(u.find_spec(x) for x in ("flask", "flask_cors", "boto3"))
    if not ok:
        print(req)
EOF
)
if [ ${#missing[@]} -gt 0 ]; then
    log "pip install ${missing[*]}"
    "$PYTHON" -m pip install --disable-pip-version-check --no-input -q "${missing[@]}"
else
    log "python packages present"
fi
log "python: $((SECONDS - t))s"

# ---- Debian packages --------------------------------------------------------------------
t=$SECONDS
need_debs=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_debs+=("$p")
done
command -v node >/dev/null || need_debs+=(nodejs)
command -v npm >/dev/null || need_debs+=(npm)
if [ ${#need_debs[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update only when the package lists do not know a package yet.
    for p in "${need_debs[@]}"; do
        if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            log "apt-get update (no candidate for $p)"
            as_root apt-get update -q >/dev/null
            break
        fi
    done
    log "apt-get install -y ${need_debs[*]}"
    as_root apt-get install -y -q --no-install-recommends "${need_debs[@]}" >/dev/null
else
    log "debian packages present"
fi
log "debian: $((SECONDS - t))s"

# ---- npm (tests/js) ---------------------------------------------------------------------
t=$SECONDS
JS="$ROOT/tests/js"
if [ -f "$JS/package.json" ]; then
    stamp="$JS/node_modules/.shale-installed"
    want="$(cat "$JS/package.json" "$JS/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        log "npm packages present"
    else
        log "npm install in tests/js"
        if [ -f "$JS/package-lock.json" ]; then
            (cd "$JS" && npm ci --no-audit --no-fund --loglevel=error)
        else
            (cd "$JS" && npm install --no-audit --no-fund --loglevel=error)
        fi
        echo "$want" >"$stamp"
    fi
fi
log "npm: $((SECONDS - t))s"

# ---- Maven (tests/java, tests/java/tools, tests/java/reference) ------------------------------
# mvn_build DIR: `mvn -q -B package` in DIR unless its target/ was built from the same pom and
# sources (a stamp of their hash next to target/classpath.txt).
mvn_build() {
    local dir="$1" stamp="$1/target/.shale-built" want
    want="$(cd "$dir" && { cat pom.xml; if [ -d src ]; then find src -type f | sort | xargs cat; fi; } | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dir/target/classpath.txt" ]; then
        log "maven: ${dir#"$ROOT"/} built"
    else
        log "mvn -q -B package in ${dir#"$ROOT"/}"
        (cd "$dir" && mvn -q -B package)
        echo "$want" >"$stamp"
    fi
}
t=$SECONDS
if command -v java >/dev/null && command -v mvn >/dev/null; then
    mvn_build "$ROOT/tests/java"
    mvn_build "$ROOT/tests/java/tools"
    if [ "${SHALE_TEST_BROKER:-shale}" = kafka ]; then
        mvn_build "$ROOT/tests/java/reference"
    fi
else
    log "no java/mvn on PATH: tests/java not built (its tests are skipped)"
fi
log "maven: $((SECONDS - t))s"
log "all test dependencies present ($((SECONDS - t_total))s)"
