#!/usr/bin/env bash
# The single test command for Quiver.
#
#   1. scripts/ci-deps.sh                (system packages + .venv, idempotent)
#   2. cargo build --workspace --all-targets
#   3. cargo test --workspace            (reuses the build)
#   4. sqllogictest: one standalone server on a free port with a temp data dir,
#      target/debug/quiver-slt over sqllogictest/test_files/*.slt; the
#      `# quiver: restart` points SIGKILL the server and start it again on the
#      same data dir and port (via `scripts/test.sh --restart-slt-server`).
#      Then the same files again through a cluster of role processes on
#      etcd and a Kafka-protocol broker (two coordinators, a leader and a
#      standby; two streaming nodes sharing the shards; two proxies taking
#      connections in turn; two query nodes; a data node) with tiny
#      segments; restart points SIGKILL the coordinators, streaming nodes
#      and proxies.
#   5. .venv/bin/pytest -q tests/python  (starts its own servers)
#
# Every stage after the build runs even if an earlier one failed; the script
# exits non-zero if any stage failed. Processes it started are cleaned up.
#
# Environment: CARGO_TARGET_DIR (default ./target), QUIVER_BIN (default
# $CARGO_TARGET_DIR/debug/quiver), SLT_FILES (default sqllogictest/test_files/*.slt),
# PYTEST_ARGS (extra pytest arguments), KEEP_WORK=1 (keep the temporary
# directory with every server log), SKIP_CARGO=1 (harness development only:
# skip cargo build/test and use the existing binaries; reported as SKIP and
# makes the script fail so it can never pass CI by accident).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export QUIVER_BIN="${QUIVER_BIN:-$TARGET_DIR/debug/quiver}"
SLT_BIN="$TARGET_DIR/debug/quiver-slt"

log() { echo "test.sh: $*" >&2; }

# ---------------------------------------------------------------------------
# Server control for the sqllogictest stage. State is passed through exported
# variables so that the restart hook (a separate process) can use it.
# ---------------------------------------------------------------------------
start_slt_server() {
    : >>"$QUIVER_SLT_LOG"
    : >"$QUIVER_SLT_PIDFILE"
    if [[ -n "${QUIVER_SLT_CLUSTER:-}" ]]; then
        start_cluster_roles
        return
    fi
    echo "=== $(date '+%F %T') starting: $QUIVER_BIN standalone --data-dir $QUIVER_SLT_DATA --listen 127.0.0.1:$QUIVER_SLT_PORT" >>"$QUIVER_SLT_LOG"
    # shellcheck disable=SC2086
    "$QUIVER_BIN" standalone \
        --data-dir "$QUIVER_SLT_DATA" \
        --listen "127.0.0.1:$QUIVER_SLT_PORT" \
        ${QUIVER_SLT_ARGS:-} \
        </dev/null >>"$QUIVER_SLT_LOG" 2>&1 &
    echo $! >>"$QUIVER_SLT_PIDFILE"
    disown $! 2>/dev/null || true
}

# The cluster's stateful-role and proxy processes (the ones a restart point
# SIGKILLs): two coordinators (a leader and a standby, elected on etcd),
# two streaming nodes sharing the shards, and two proxies, all reading the config
# $QUIVER_SLT_CLUSTER; query/data nodes and etcd stay up.
start_cluster_roles() {
    local spec role name listen
    for spec in "coordinator coordinator 127.0.0.1:$QUIVER_SLT_COORDINATOR_PORT" \
        "coordinator coordinator2 127.0.0.1:$QUIVER_SLT_COORDINATOR2_PORT" \
        "streaming-node streaming 127.0.0.1:$QUIVER_SLT_STREAMING_PORT" \
        "streaming-node streaming2 127.0.0.1:$QUIVER_SLT_STREAMING2_PORT" \
        "proxy proxy1 127.0.0.1:$QUIVER_SLT_PORT" \
        "proxy proxy2 127.0.0.1:$QUIVER_SLT_PORT2"; do
        read -r role name listen <<<"$spec"
        echo "=== $(date '+%F %T') starting $name: $QUIVER_BIN $role --listen $listen" >>"$QUIVER_SLT_LOG"
        "$QUIVER_BIN" "$role" --config "$QUIVER_SLT_CLUSTER" \
            --data-dir "$QUIVER_SLT_DATA/$name" --listen "$listen" \
            </dev/null >>"$QUIVER_SLT_LOG" 2>&1 &
        echo $! >>"$QUIVER_SLT_PIDFILE"
        disown $! 2>/dev/null || true
    done
}

# True while pid exists and is not a zombie.
pid_running() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo "?")
    [[ "$state" != "Z" ]]
}

kill_slt_server() {
    local sig=${1:-KILL} pid
    [[ -f "$QUIVER_SLT_PIDFILE" ]] || return 0
    for pid in $(cat "$QUIVER_SLT_PIDFILE" 2>/dev/null); do
        kill_pid "$sig" "$pid"
    done
    rm -f "$QUIVER_SLT_PIDFILE"
}

kill_pid() {
    local sig=$1 pid=$2
    if pid_running "$pid"; then
        kill "-$sig" "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            pid_running "$pid" || break
            sleep 0.1
        done
        if pid_running "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                pid_running "$pid" || break
                sleep 0.1
            done
        fi
        # Give the parent (or init, for a server started by the restart hook)
        # a moment to reap the zombie, so that nothing still sees the old pid.
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
}

wait_slt_server() {
    local timeout=${1:-120} deadline port
    deadline=$((SECONDS + timeout))
    for port in "$QUIVER_SLT_PORT" ${QUIVER_SLT_PORT2:-}; do
        while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
            if ! all_slt_servers_running || ((SECONDS >= deadline)); then
                log "quiver did not accept connections on port $port; last lines of $QUIVER_SLT_LOG:"
                tail -n 40 "$QUIVER_SLT_LOG" >&2
                return 1
            fi
            sleep 0.2
        done
    done
}

all_slt_servers_running() {
    local pid
    for pid in $(cat "$QUIVER_SLT_PIDFILE"); do
        pid_running "$pid" || { log "quiver process $pid exited"; return 1; }
    done
}

# Restart hook used by quiver-slt (--restart-cmd): SIGKILL + start again on the
# same data dir and port.
if [[ "${1:-}" == "--restart-slt-server" ]]; then
    : "${QUIVER_SLT_DATA:?}" "${QUIVER_SLT_PORT:?}" "${QUIVER_SLT_PIDFILE:?}" "${QUIVER_SLT_LOG:?}"
    kill_slt_server KILL
    echo "=== $(date '+%F %T') killed with SIGKILL by the restart hook" >>"$QUIVER_SLT_LOG"
    start_slt_server
    wait_slt_server 120
    exit $?
fi

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/quiver-test.XXXXXX")"
export QUIVER_SLT_DATA="$WORK/slt-data"
export QUIVER_SLT_LOG="$WORK/slt-server.log"
export QUIVER_SLT_PIDFILE="$WORK/slt-server.pid"
export QUIVER_SLT_PORT=""
export QUIVER_SLT_ARGS=""
PYTEST_PID=""
# Role processes (query/data nodes) started for the second slt pass.
declare -a NODE_PIDS=()

stop_role_nodes() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
}

free_port() {
    "$ROOT/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$PYTEST_PID" ]] && kill -0 "$PYTEST_PID" 2>/dev/null; then
        # conftest.py turns SIGTERM into KeyboardInterrupt, so pytest runs its
        # fixture teardown, which kills the servers it started. (SIGINT is
        # ignored by background jobs of a non-interactive shell.)
        kill -TERM "$PYTEST_PID" 2>/dev/null || true
        wait "$PYTEST_PID" 2>/dev/null || true
    fi
    kill_slt_server KILL
    stop_role_nodes
    if [[ "${KEEP_WORK:-0}" == 1 ]]; then
        log "kept $WORK (KEEP_WORK=1)"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

declare -a STAGE_NAMES=() STAGE_RESULTS=()
record() { STAGE_NAMES+=("$1"); STAGE_RESULTS+=("$2"); }

summary() {
    echo
    echo "==================== test.sh summary ===================="
    local i
    for i in "${!STAGE_NAMES[@]}"; do
        printf '  %-6s %s\n' "${STAGE_RESULTS[$i]}" "${STAGE_NAMES[$i]}"
    done
    echo "========================================================="
}

# 1. dependencies
# Free disk space where the build and the servers write: a full disk shows up
# later as unrelated-looking failures (servers that never listen), so say it
# up front.
report_disk() {
    local dir avail
    for dir in "$ROOT" "${TMPDIR:-/tmp}"; do
        avail=$(df -Pk "$dir" 2>/dev/null | awk 'NR==2 {print int($4/1024)}')
        log "disk: ${avail:-?} MiB free under $dir"
        if [[ -n "$avail" ]] && ((avail < 4096)); then
            log "WARNING: less than 4 GiB free under $dir; tests may fail with ENOSPC"
        fi
    done
}
report_disk

log "installing dependencies (scripts/ci-deps.sh)"
if ! "$ROOT/scripts/ci-deps.sh"; then
    log "dependency installation failed"
    exit 1
fi

if [[ "${SKIP_CARGO:-0}" == 1 ]]; then
    # Harness development only: reuse existing binaries.
    log "SKIP_CARGO=1: skipping cargo build and cargo test"
    record "cargo build/test (skipped)" SKIP
else
    # 2. build once
    log "cargo build --workspace --all-targets"
    if ! cargo build --workspace --all-targets; then
        record "cargo build" FAIL
        summary
        exit 1
    fi
    record "cargo build" ok

    # 3. unit / integration tests of the Rust crates
    log "cargo test --workspace"
    if cargo test --workspace; then
        record "cargo test" ok
    else
        record "cargo test" FAIL
    fi
fi

# 4. sqllogictest against one standalone server
run_slt() {
    if [[ ! -x "$QUIVER_BIN" ]]; then
        log "quiver binary not found at $QUIVER_BIN"
        return 1
    fi
    if [[ ! -x "$SLT_BIN" ]]; then
        log "quiver-slt binary not found at $SLT_BIN"
        return 1
    fi
    QUIVER_SLT_PORT="$(free_port)"
    export QUIVER_SLT_PORT
    mkdir -p "$QUIVER_SLT_DATA"
    start_slt_server
    wait_slt_server 120 || return 1

    local files rc
    # shellcheck disable=SC2206
    files=(${SLT_FILES:-sqllogictest/test_files/*.slt})
    log "quiver-slt on port $QUIVER_SLT_PORT: ${files[*]}"
    # shellcheck disable=SC2046
    "$SLT_BIN" --port "$QUIVER_SLT_PORT" $([[ -n "${QUIVER_SLT_PORT2:-}" ]] && echo --port "$QUIVER_SLT_PORT2") \
        --restart-cmd "'$ROOT/scripts/test.sh' --restart-slt-server" \
        "${files[@]}"
    rc=$?
    kill_slt_server TERM
    if ((rc != 0)); then
        log "last lines of the server log ($QUIVER_SLT_LOG):"
        tail -n 60 "$QUIVER_SLT_LOG" >&2
    fi
    return "$rc"
}
if run_slt; then
    record "sqllogictest" ok
else
    record "sqllogictest" FAIL
fi

# 4b. the same files through a cluster whose every role is a process of its
# own: etcd, a Kafka-protocol broker (tansu) for the WAL, two coordinators
# (leader + standby), two streaming nodes sharing the shards (so statements
# over several shards commit across both nodes), two proxies
# (connections alternate between them), two query nodes and a data node,
# all on TLS with a cluster secret, with tiny segments so that sealing,
# placement and index builds happen all the time. Restart points SIGKILL
# all but etcd and the query/data nodes.
run_slt_on_cluster() {
    local config="$WORK/cluster.toml" q1 q2 d1 etcd etcd_peer broker name port
    local tansu="${QUIVER_SERVICES_DIR:-$HOME/.cache/quiver-services}/bin/tansu"
    if ! command -v etcd >/dev/null; then
        log "etcd is missing (scripts/ci-deps.sh installs etcd-server)"
        return 1
    fi
    if [[ ! -x "$tansu" ]]; then
        log "tansu is missing (scripts/ci-deps.sh installs it)"
        return 1
    fi
    q1="$(free_port)"; q2="$(free_port)"; d1="$(free_port)"
    etcd="$(free_port)"; etcd_peer="$(free_port)"; broker="$(free_port)"
    QUIVER_SLT_COORDINATOR_PORT="$(free_port)"
    QUIVER_SLT_STREAMING_PORT="$(free_port)"
    QUIVER_SLT_COORDINATOR2_PORT="$(free_port)"
    QUIVER_SLT_STREAMING2_PORT="$(free_port)"
    QUIVER_SLT_PORT2="$(free_port)"
    export QUIVER_SLT_COORDINATOR_PORT QUIVER_SLT_STREAMING_PORT QUIVER_SLT_PORT2 \
        QUIVER_SLT_COORDINATOR2_PORT QUIVER_SLT_STREAMING2_PORT
    # Every link between the roles runs over TLS: a CA and one certificate
    # for 127.0.0.1 that it signs.
    local tls="$WORK/cluster-tls"
    mkdir -p "$tls"
    if ! (cd "$tls" &&
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=quiver test CA" \
            -keyout ca.key -out ca.crt &&
        openssl req -newkey rsa:2048 -nodes -subj "/CN=quiver role" -keyout node.key -out node.csr &&
        printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n' >ext.cnf &&
        openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile ext.cnf -out node.crt) >>"$WORK/openssl.log" 2>&1; then
        log "could not make the cluster's TLS certificates (see $WORK/openssl.log)"
        return 1
    fi
    cat >"$config" <<EOF
[coordinator]
query_nodes = ["127.0.0.1:$q1", "127.0.0.1:$q2"]
data_nodes = ["127.0.0.1:$d1"]
node_probe_interval_ms = 200
# Also the leases of the elected coordinator and streaming node: a process
# restarted after SIGKILL leads once its predecessor's lease lapsed.
node_failure_timeout_ms = 1000
min_index_rows = 2

[streaming]
seal_rows = 3

[cluster]
coordinators = ["127.0.0.1:$QUIVER_SLT_COORDINATOR_PORT", "127.0.0.1:$QUIVER_SLT_COORDINATOR2_PORT"]
streaming_nodes = ["127.0.0.1:$QUIVER_SLT_STREAMING_PORT", "127.0.0.1:$QUIVER_SLT_STREAMING2_PORT"]
secret = "slt-cluster-secret"

[cluster.tls]
cert = "$tls/node.crt"
key = "$tls/node.key"
ca = "$tls/ca.crt"

[storage.meta]
kind = "etcd"
endpoints = ["http://127.0.0.1:$etcd"]
root = "/quiver-slt"

[storage.wal]
kind = "kafka"
brokers = "127.0.0.1:$broker"
topic = "quiver-slt-wal"
delete_sealed_records = false

[storage.object]
kind = "local"
root = "$WORK/cluster-objects"
EOF
    etcd --name slt --data-dir "$WORK/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd" --advertise-client-urls "http://127.0.0.1:$etcd" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "slt=http://127.0.0.1:$etcd_peer" </dev/null >>"$WORK/etcd.log" 2>&1 &
    NODE_PIDS+=($!)
    mkdir -p "$WORK/tansu"
    # tansu resolves the SQLite path against its working directory.
    (cd "$WORK/tansu" && exec "$tansu" broker --listener-url "tcp://127.0.0.1:$broker" \
        --advertised-listener-url "tcp://127.0.0.1:$broker" --storage-engine "sqlite://tansu.db") \
        </dev/null >>"$WORK/tansu.log" 2>&1 &
    NODE_PIDS+=($!)
    # Nodes register in etcd as they start: wait until it serves.
    local healthy=0
    for _ in $(seq 1 150); do
        if curl -sf "http://127.0.0.1:$etcd/health" 2>/dev/null | grep -q '"true"'; then
            healthy=1
            break
        fi
        sleep 0.2
    done
    if ((healthy == 0)); then
        log "etcd did not become healthy; last lines of its log:"
        tail -n 20 "$WORK/etcd.log" >&2
        stop_role_nodes
        return 1
    fi
    for spec in "query-node q1 $q1" "query-node q2 $q2" "data-node d1 $d1"; do
        read -r role name port <<<"$spec"
        "$QUIVER_BIN" "$role" --config "$config" --data-dir "$WORK/$name" \
            --listen "127.0.0.1:$port" </dev/null >>"$WORK/$name.log" 2>&1 &
        NODE_PIDS+=($!)
    done
    for port in "$q1" "$q2" "$d1" "$broker"; do
        for _ in $(seq 1 150); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.2
        done
    done
    QUIVER_SLT_DATA="$WORK/slt-cluster"
    QUIVER_SLT_LOG="$WORK/slt-cluster.log"
    QUIVER_SLT_CLUSTER="$config"
    export QUIVER_SLT_CLUSTER
    local rc=0
    run_slt || rc=1
    if ((rc != 0)); then
        for name in q1 q2 d1 etcd tansu; do
            log "last lines of $name's log:"
            tail -n 20 "$WORK/$name.log" >&2
        done
    fi
    stop_role_nodes
    QUIVER_SLT_CLUSTER=""
    QUIVER_SLT_PORT2=""
    return "$rc"
}
if run_slt_on_cluster; then
    record "sqllogictest (cluster: every role a process, two proxies)" ok
else
    record "sqllogictest (cluster: every role a process, two proxies)" FAIL
fi

# 5. Python suite (starts its own servers)
report_disk
log ".venv/bin/pytest -q tests/python"
# shellcheck disable=SC2086
"$ROOT/.venv/bin/pytest" -q tests/python ${PYTEST_ARGS:-} &
PYTEST_PID=$!
wait "$PYTEST_PID"
rc=$?
PYTEST_PID=""
if ((rc == 0)); then
    record "pytest" ok
else
    record "pytest (exit $rc)" FAIL
fi

summary
for r in "${STAGE_RESULTS[@]}"; do
    [[ "$r" == ok ]] || exit 1
done
exit 0
