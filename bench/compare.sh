#!/usr/bin/env bash
# kvmesh and Redis, measured side by side by the same client (kvmesh-bench), on this machine.
#
#   bench/compare.sh                        # from anywhere; takes about 4 minutes
#   DURATION=20s WARMUP=5s bench/compare.sh # longer runs
#
# What it does:
#   - installs redis-server if it is missing (Debian's package also starts a service on 6379;
#     it is left alone: this script runs its own private instance on a free port);
#   - builds kvmesh and kvmesh-bench in release;
#   - headline, per core: redis-server (no persistence) and a kvmesh node (1 shard, no
#     --data-dir: pure in-memory) each pinned to core 0, the client pinned to core 1;
#   - second table: kvmesh with 2 shards on cores 0,1, the client sharing both cores;
#   - workloads: 100-byte values, 100k keys, 50 connections, GET-only and SET-only, pipeline 1
#     and 16; throughput, p99, server CPU time per request (utime+stime from /proc over the
#     measured phase, divided by the requests) and errors, with kvmesh/redis ratios;
#   - memory: server RSS after loading 1M keys of 100 bytes minus RSS before, per key.
# Everything it starts is stopped when it exits, however it exits.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
WORK=$(mktemp -d -t kvmesh-compare.XXXXXX)
SERVERS=()

cleanup() {
    for pid in "${SERVERS[@]}"; do
        stop_server "$pid"
    done
    SERVERS=()
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "compare: $*" >&2; }

# Stops a server we started: SIGTERM, then SIGKILL if it is still there after 5 s.
stop_server() {
    local pid=$1 rest=() p
    for p in "${SERVERS[@]}"; do
        [ "$p" = "$pid" ] || rest+=("$p")
    done
    SERVERS=("${rest[@]}")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        case "$(ps -o stat= -p "$pid" 2>/dev/null)" in "" | Z*) break ;; esac
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Waits until a log file contains a pattern, or fails if the process died or 20 s passed.
wait_for_log() {
    local pid=$1 file=$2 pattern=$3
    for _ in $(seq 200); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            log "server $pid exited before it was ready:"; cat "$file" >&2; exit 1
        fi
        sleep 0.1
    done
    log "server $pid not ready after 20 s:"; cat "$file" >&2; exit 1
}

# start_redis CORE: sets SERVER_PID and SERVER_ADDR.
start_redis() {
    local port
    port=$("$BENCH" free-port)
    taskset -c "$1" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --daemonize no >"$WORK/redis-$port.log" 2>&1 &
    SERVER_PID=$!
    SERVERS+=("$SERVER_PID")
    SERVER_ADDR=127.0.0.1:$port
    wait_for_log "$SERVER_PID" "$WORK/redis-$port.log" "Ready to accept connections"
}

# start_kvmesh SHARDS CPUS: sets SERVER_PID and SERVER_ADDR. Needs PORT..PORT+SHARDS+1 free
# (the wire port, the shard ports, and the gRPC port after them).
start_kvmesh() {
    local port
    port=$("$BENCH" free-port --count $(($1 + 2)))
    "$KVMESH" node --listen "127.0.0.1:$port" --shards "$1" --cpus "$2" --max-memory 2GiB \
        --grpc "127.0.0.1:$((port + $1 + 1))" >"$WORK/kvmesh-$port.log" 2>&1 &
    SERVER_PID=$!
    SERVERS+=("$SERVER_PID")
    SERVER_ADDR=127.0.0.1:$port
    wait_for_log "$SERVER_PID" "$WORK/kvmesh-$port.log" "ready"
}

# run_bench RESULTS LABEL TARGET CLIENT_CPUS [flags...]: one run against the current server;
# its JSON report is appended to RESULTS.
run_bench() {
    local results=$1 label=$2 target=$3 cpus=$4
    shift 4
    if ! "$BENCH" --target "$target" --addr "$SERVER_ADDR" --server-pid "$SERVER_PID" \
        --label "$label" --cpus "$cpus" --json "$@" >"$WORK/run.out" 2>"$WORK/run.err"; then
        log "kvmesh-bench failed:"; cat "$WORK/run.err" "$WORK/run.out" >&2; exit 1
    fi
    tail -n 1 "$WORK/run.out" >>"$results"
    log "$label $* -> $(grep -E '^(throughput|memory):' "$WORK/run.out" | head -n 1 | tr -s ' ')"
}

# The four workloads of a table.
run_workloads() {
    local results=$1 label=$2 target=$3 cpus=$4
    for ratio in 1 0; do
        for pipeline in 1 16; do
            run_bench "$results" "$label" "$target" "$cpus" --connections 50 --keys 100000 \
                --value-size 100 --read-ratio "$ratio" --pipeline "$pipeline" \
                --duration "$DURATION" --warmup "$WARMUP"
        done
    done
}

if ! command -v redis-server >/dev/null; then
    log "installing redis-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
log "building kvmesh and kvmesh-bench (release)"
cargo build --release -q -p kvmesh -p kvmesh-bench
BENCH=target/release/kvmesh-bench
KVMESH=target/release/kvmesh
if [ "$(nproc)" -lt 2 ]; then
    log "needs at least 2 cores (server on core 0, client on core 1); this machine has $(nproc)"
    exit 1
fi

log "headline: one core each (server on core 0, client on core 1), $DURATION per run after $WARMUP warmup"
start_redis 0
run_workloads "$WORK/headline.jsonl" redis redis 1
stop_server "$SERVER_PID"
start_kvmesh 1 0
run_workloads "$WORK/headline.jsonl" kvmesh kvmesh 1
stop_server "$SERVER_PID"

log "second table: kvmesh with 2 shards on cores 0,1, client sharing both cores"
start_kvmesh 2 0,1
run_workloads "$WORK/shards.jsonl" kvmesh-2-shards kvmesh 0,1
stop_server "$SERVER_PID"

log "memory: 1M keys of 100 bytes into a fresh server"
start_redis 0
run_bench "$WORK/memory.jsonl" redis redis 1 --prefill-only --keys 1000000 --value-size 100 \
    --connections 8 --pipeline 32
stop_server "$SERVER_PID"
start_kvmesh 1 0
run_bench "$WORK/memory.jsonl" kvmesh kvmesh 1 --prefill-only --keys 1000000 --value-size 100 \
    --connections 8 --pipeline 32
stop_server "$SERVER_PID"

echo "## kvmesh vs Redis, $(date -u +%Y-%m-%d)"
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r)."
echo "Redis: $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-) (no persistence). kvmesh: $(git describe --always --dirty 2>/dev/null || echo "no commit yet") (in-memory, no --data-dir)."
echo "Command: \`bench/compare.sh\` (DURATION=$DURATION, WARMUP=$WARMUP per run). CPU us/req is the server's user+system time over the measured phase divided by the requests."
echo
"$BENCH" table --title "Per core: server pinned to core 0 (kvmesh: 1 shard), client on core 1" "$WORK/headline.jsonl"
echo
"$BENCH" table --title "kvmesh with 2 shards on cores 0,1, client sharing both cores" "$WORK/shards.jsonl"
echo
"$BENCH" table --title "Memory: 1M keys of 100 bytes" "$WORK/memory.jsonl"
