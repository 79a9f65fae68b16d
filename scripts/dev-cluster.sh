#!/usr/bin/env bash
# A whole local Quiver cluster for development, on 127.0.0.1:
#
#   scripts/dev-cluster.sh start [DIR]    install (idempotently) and start etcd,
#                                         a Kafka-protocol broker (tansu), an S3
#                                         server (s3s-fs), then a data node, two
#                                         query nodes, two coordinators (a
#                                         leader and a standby), two streaming
#                                         nodes sharing the shards and two
#                                         proxies
#   scripts/dev-cluster.sh status [DIR]   what runs, and how to connect
#   scripts/dev-cluster.sh stop [DIR]     stop exactly the processes start started
#
# DIR (default ./quiver-cluster) holds every process's data, logs, the shared
# configuration (quiver.toml) and the pid file. Metadata lives in etcd, the
# WAL in the broker and segments/indexes in the bucket, so `stop` + `start`
# on the same DIR brings the same data back. The proxies listen on
# $QUIVER_PORT (default 5488) and $QUIVER_PORT2 (default the port after
# it); every other port is
# picked free at the first start and kept in DIR/ports. QUIVER_BIN overrides
# the binary (default: a debug build, built here).
#
# Every role is a process of its own; query, data and streaming nodes
# register in etcd (streaming nodes share the shards out there),
# coordinators elect their leader there (the standby does not listen until
# it leads), proxies find them through [cluster].
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMD="${1:-}"
DIR="$(realpath -m "${2:-$ROOT/quiver-cluster}")"
PIDS="$DIR/pids"
SERVICES="${QUIVER_SERVICES_DIR:-$HOME/.cache/quiver-services}"

log() { echo "dev-cluster: $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    local name=$1 port=$2 pid=$3
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited; last lines of $DIR/$name.log:"
            tail -n 20 "$DIR/$name.log" >&2
            return 1
        fi
        sleep 0.2
    done
    log "$name does not listen on $port"
    return 1
}

# Starts one process in the background, logging to DIR/NAME.log, and records
# its pid with the executable it runs (so `stop` never kills a reused pid).
spawn() {
    local name=$1 port=$2
    shift 2
    spawn_only "$name" "$@"
    wait_port "$name" "$port" "$SPAWNED"
}

# The same without waiting for a port: a standby listens only once it leads.
spawn_standby() {
    local name=$1
    shift 2
    spawn_only "$name" "$@"
    sleep 0.5
    if ! kill -0 "$SPAWNED" 2>/dev/null; then
        log "$name exited; last lines of $DIR/$name.log:"
        tail -n 20 "$DIR/$name.log" >&2
        return 1
    fi
}

spawn_only() {
    local name=$1
    shift
    (cd "$DIR" && exec "$@" </dev/null >>"$DIR/$name.log" 2>&1) &
    SPAWNED=$!
    echo "$name $SPAWNED $1" >>"$PIDS"
}

running() {
    local pid=$1 exe=$2
    [[ -e "/proc/$pid" ]] && [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$(readlink -f "$exe")" ]]
}

stop_all() {
    [[ -f "$PIDS" ]] || { log "nothing started from $DIR"; return 0; }
    local name pid exe
    # Reverse start order: the proxy first, the services last.
    tac "$PIDS" | while read -r name pid exe; do
        if running "$pid" "$exe"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                running "$pid" "$exe" || break
                sleep 0.1
            done
            if running "$pid" "$exe"; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
            log "stopped $name (pid $pid)"
        fi
    done
    rm -f "$PIDS"
}

status() {
    [[ -f "$PIDS" ]] || { log "nothing started from $DIR"; return 1; }
    local name pid exe rc=0
    while read -r name pid exe; do
        if running "$pid" "$exe"; then
            echo "running  $name (pid $pid)"
        else
            echo "stopped  $name (pid $pid)"
            rc=1
        fi
    done <"$PIDS"
    # shellcheck disable=SC1091
    source "$DIR/ports"
    echo "connect: psql -h 127.0.0.1 -p $PROXY_PORT -U postgres postgres (or -p $PROXY2_PORT)"
    echo "health:  quiver probe 127.0.0.1:PORT for PORT in $HEALTH_PORT $HEALTH2_PORT (proxies) $COORDINATOR_PORT $STREAMING_PORT $QUERY1_PORT $QUERY2_PORT $DATA_PORT"
    return "$rc"
}

start() {
    mkdir -p "$DIR"
    if [[ -f "$PIDS" ]]; then
        log "$DIR has a running cluster (or a stale pid file): run stop first"
        return 1
    fi
    "$ROOT/scripts/ci-deps.sh" --services
    local bin="${QUIVER_BIN:-}"
    if [[ -z "$bin" ]]; then
        # The same build as scripts/test.sh: neither rebuilds the other's work.
        (cd "$ROOT" && cargo build --workspace --all-targets)
        bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/quiver"
    fi
    bin="$(realpath "$bin")"
    if [[ ! -f "$DIR/ports" ]]; then
        cat >"$DIR/ports" <<EOF
PROXY_PORT=${QUIVER_PORT:-5488}
ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port)
KAFKA_PORT=$(free_port)
S3_PORT=$(free_port)
DATA_PORT=$(free_port)
QUERY1_PORT=$(free_port)
QUERY2_PORT=$(free_port)
HEALTH_PORT=$(free_port)
PROXY2_PORT=${QUIVER_PORT2:-$((${QUIVER_PORT:-5488} + 1))}
EOF
    fi
    # shellcheck disable=SC1091
    source "$DIR/ports"
    # Ports added by later versions of this script.
    local var
    for var in HEALTH_PORT HEALTH2_PORT COORDINATOR_PORT STREAMING_PORT COORDINATOR2_PORT \
        STREAMING2_PORT; do
        if [[ -z "${!var:-}" ]]; then
            echo "$var=$(free_port)" >>"$DIR/ports"
        fi
    done
    if [[ -z "${PROXY2_PORT:-}" ]]; then
        echo "PROXY2_PORT=${QUIVER_PORT2:-$((PROXY_PORT + 1))}" >>"$DIR/ports"
    fi
    # shellcheck disable=SC1091
    source "$DIR/ports"
    mkdir -p "$DIR/s3/quiver"
    cat >"$DIR/quiver.toml" <<EOF
# Written by scripts/dev-cluster.sh; every process reads it.
[coordinator]
listen = "127.0.0.1:$COORDINATOR_PORT"
discover_query_nodes = true
discover_data_nodes = true

[streaming]
listen = "127.0.0.1:$STREAMING_PORT"

[cluster]
coordinators = ["127.0.0.1:$COORDINATOR_PORT", "127.0.0.1:$COORDINATOR2_PORT"]
streaming_nodes = ["127.0.0.1:$STREAMING_PORT", "127.0.0.1:$STREAMING2_PORT"]

[storage.meta]
kind = "etcd"
endpoints = ["http://127.0.0.1:$ETCD_PORT"]
root = "/quiver"

[storage.wal]
kind = "kafka"
brokers = "127.0.0.1:$KAFKA_PORT"
topic = "quiver-wal"
# tansu 0.6's SQLite storage cannot delete records.
delete_sealed_records = false

[storage.object]
kind = "s3"
bucket = "quiver"
endpoint = "http://127.0.0.1:$S3_PORT"
access_key_id = "quiver-dev"
secret_access_key = "quiver-dev-secret"
allow_http = true
EOF
    local etcd_url="http://127.0.0.1:$ETCD_PORT" peer_url="http://127.0.0.1:$ETCD_PEER_PORT"
    local kafka_url="tcp://127.0.0.1:$KAFKA_PORT"
    if ! {
        spawn etcd "$ETCD_PORT" "$(command -v etcd)" --name dev --data-dir "$DIR/etcd" \
            --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
            --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
            --initial-cluster "dev=$peer_url" --max-txn-ops 1024 &&
        spawn s3s-fs "$S3_PORT" "$SERVICES/bin/s3s-fs" --host 127.0.0.1 --port "$S3_PORT" \
            --access-key quiver-dev --secret-key quiver-dev-secret "$DIR/s3" &&
        spawn tansu "$KAFKA_PORT" "$SERVICES/bin/tansu" broker --listener-url "$kafka_url" \
            --advertised-listener-url "$kafka_url" --storage-engine "sqlite://tansu.db" &&
        spawn data-node "$DATA_PORT" "$bin" data-node --config "$DIR/quiver.toml" \
            --data-dir "$DIR/data-node" --listen "127.0.0.1:$DATA_PORT" &&
        spawn query-node-1 "$QUERY1_PORT" "$bin" query-node --config "$DIR/quiver.toml" \
            --data-dir "$DIR/query-node-1" --listen "127.0.0.1:$QUERY1_PORT" &&
        spawn query-node-2 "$QUERY2_PORT" "$bin" query-node --config "$DIR/quiver.toml" \
            --data-dir "$DIR/query-node-2" --listen "127.0.0.1:$QUERY2_PORT" &&
        spawn coordinator "$COORDINATOR_PORT" "$bin" coordinator --config "$DIR/quiver.toml" \
            --data-dir "$DIR/coordinator" &&
        spawn streaming-node "$STREAMING_PORT" "$bin" streaming-node --config "$DIR/quiver.toml" \
            --data-dir "$DIR/streaming-node" &&
        spawn_standby coordinator-2 "$COORDINATOR2_PORT" "$bin" coordinator \
            --config "$DIR/quiver.toml" --data-dir "$DIR/coordinator-2" \
            --listen "127.0.0.1:$COORDINATOR2_PORT" &&
        spawn streaming-node-2 "$STREAMING2_PORT" "$bin" streaming-node \
            --config "$DIR/quiver.toml" --data-dir "$DIR/streaming-node-2" \
            --listen "127.0.0.1:$STREAMING2_PORT" &&
        spawn proxy-1 "$PROXY_PORT" "$bin" proxy --config "$DIR/quiver.toml" \
            --data-dir "$DIR/proxy-1" --listen "127.0.0.1:$PROXY_PORT" \
            --health-listen "127.0.0.1:$HEALTH_PORT" &&
        spawn proxy-2 "$PROXY2_PORT" "$bin" proxy --config "$DIR/quiver.toml" \
            --data-dir "$DIR/proxy-2" --listen "127.0.0.1:$PROXY2_PORT" \
            --health-listen "127.0.0.1:$HEALTH2_PORT"
    }; then
        log "start failed; stopping what was started"
        stop_all
        return 1
    fi
    log "cluster running from $DIR"
    status
}

case "$CMD" in
    start) start ;;
    stop) stop_all ;;
    status) status ;;
    *)
        echo "usage: $0 start|status|stop [DIR]" >&2
        exit 2
        ;;
esac
