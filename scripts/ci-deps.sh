#!/usr/bin/env bash
# Idempotent installer for everything the test suite needs beyond the Rust
# toolchain: system packages (only the missing ones), Node.js packages for
# tests/node, and a Python virtualenv at
# .venv with psycopg 3, asyncpg, SQLAlchemy 2, pgvector-python, numpy and pytest (only if they are not importable yet).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "ci-deps: $*" >&2; }

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    fi
fi

# ---------------------------------------------------------------------------
# System packages
# ---------------------------------------------------------------------------
APT_PACKAGES=(
    postgresql-client
    build-essential
    pkg-config
    libssl-dev
    openssl
    cmake
    protobuf-compiler
    libprotobuf-dev
    libcurl4-openssl-dev
    libpostgresql-jdbc-java
    etcd-server
    etcd-client
)

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${APT_PACKAGES[@]}"; do
        case "$pkg" in
            postgresql-client)
                # Any psql will do (e.g. postgresql-client-15 without the metapackage).
                command -v psql >/dev/null 2>&1 && continue ;;
        esac
        pkg_installed "$pkg" || missing+=("$pkg")
    done
else
    log "dpkg-query not found; skipping system package checks"
fi

if ((${#missing[@]} > 0)); then
    if [[ "$(id -u)" -ne 0 && -z "$SUDO" ]]; then
        log "missing packages (${missing[*]}) but not root and no sudo; continuing without them"
    else
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
else
    log "system packages present"
fi

# `--build-only` (scripts/run-standalone.sh): just what building needs.
if [[ "${1:-}" == "--build-only" ]]; then
    exit 0
fi

# `--services` (scripts/dev-cluster.sh): the build packages above plus the
# backing services below; no client-test tooling.
if [[ "${1:-}" != "--services" ]]; then

# A JDK runs tests/jdbc as a single-file source program.
if ! command -v javac >/dev/null 2>&1; then
    log "installing a JDK"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends default-jdk-headless
fi

# ---------------------------------------------------------------------------
# Node.js client tests (tests/node): node-postgres + pgvector-node
# ---------------------------------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "installing nodejs and npm"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
if [[ ! -d "$ROOT/tests/node/node_modules/pg" || ! -d "$ROOT/tests/node/node_modules/pgvector" ]]; then
    log "installing node packages into tests/node"
    (cd "$ROOT/tests/node" && npm ci --no-audit --no-fund --loglevel=error)
else
    log "node packages ready (tests/node)"
fi

fi  # not --services

# ---------------------------------------------------------------------------
# Backing services compiled once into a cache outside the repository:
# s3s-fs (S3 API over a directory, a few minutes) and tansu (below). etcd
# comes from apt (etcd-server, above).
# ---------------------------------------------------------------------------
SERVICES="${QUIVER_SERVICES_DIR:-$HOME/.cache/quiver-services}"
if [[ ! -x "$SERVICES/bin/s3s-fs" ]]; then
    log "installing s3s-fs 0.14.1 into $SERVICES (once)"
    cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$SERVICES" --quiet
else
    log "s3s-fs ready ($SERVICES/bin/s3s-fs)"
fi
# Kafka-protocol broker for the Kafka WAL tests: tansu (Apache-2.0, Rust),
# compiled once (~12-15 minutes on 2 cores; no Kafka is packaged here).
if [[ ! -x "$SERVICES/bin/tansu" ]]; then
    log "installing tansu 0.6.0 into $SERVICES (once, ~15 min)"
    cargo install tansu --version 0.6.0 --features libsql,dynostore --locked --root "$SERVICES" --quiet
else
    log "tansu ready ($SERVICES/bin/tansu)"
fi
if [[ "${1:-}" == "--services" ]]; then
    exit 0
fi

# ---------------------------------------------------------------------------
# Python virtualenv
# ---------------------------------------------------------------------------
VENV="$ROOT/.venv"
PY_IMPORTS="import psycopg, numpy, pytest, pgvector, asyncpg, sqlalchemy"

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "$PY_IMPORTS" >/dev/null 2>&1; then
    log "python venv ready ($VENV)"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    PYTHON="${PYTHON:-python3}"
    log "creating venv with $PYTHON"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 needs python3-venv for ensurepip.
        rm -rf "$VENV"
        if ! pkg_installed python3-venv; then
            export DEBIAN_FRONTEND=noninteractive
            $SUDO apt-get update -qq
            $SUDO apt-get install -y -qq --no-install-recommends python3-venv
        fi
        /usr/bin/python3 -m venv "$VENV"
    fi
fi

log "installing python packages into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "psycopg[binary]" numpy pytest pgvector asyncpg "sqlalchemy>=2"
"$VENV/bin/python" -c "$PY_IMPORTS"
log "python venv ready ($VENV)"
