#!/usr/bin/env bash
# Two kvmesh builds, measured in interleaved rounds by the same client: what a change costs.
#
#   bench/ab.sh BASE_BINARY NEW_BINARY [node flags for both...]
#   ROUNDS=5 DURATION=10s bench/ab.sh /tmp/kvmesh-main target/release/kvmesh --metrics 127.0.0.1:9100
#   BASE_ENV=GLOMMIO_NO_COOP_TASKRUN=1 bench/ab.sh target/release/kvmesh target/release/kvmesh
#
#   WORKLOADS="1:16 0:16" bench/ab.sh BASE NEW    # GET and SET at pipeline 16 only
#
# BASE_ENV and NEW_ENV (space-separated VAR=value words, empty by default) are set for that
# side's node and client, so one binary can be compared with a switch off and on.
# Each round runs, against each binary in turn, a fresh node with 1 shard pinned to core 0
# (no --data-dir) and kvmesh-bench pinned to core 1: 50 connections, 100k keys, 100-byte values,
# the workloads of WORKLOADS (READ_RATIO:PIPELINE words; default GET and SET at pipeline 1,
# GET at pipeline 16: "1:1 0:1 1:16"). It logs every run, then prints a table per round.
# Build the binaries first (e.g. `cargo build --release -p kvmesh -p kvmesh-bench`, and the base
# from another checkout); kvmesh-bench is taken from target/release.
set -euo pipefail

cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,18p "$0" >&2; exit 2; }
BASE=$(realpath "$1") NEW=$(realpath "$2")
shift 2
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
WORKLOADS=${WORKLOADS:-1:1 0:1 1:16}
BENCH=target/release/kvmesh-bench
WORK=$(mktemp -d -t kvmesh-ab.XXXXXX)
PID=""

cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "ab: $*" >&2; }

# run LABEL BINARY ROUND: one node, the three workloads, results appended to
# $WORK/round-ROUND.jsonl.
run() {
    local label=$1 binary=$2 round=$3 port vars
    port=$("$BENCH" free-port --count 3)
    vars=${BASE_ENV:-}
    [ "$label" = new ] && vars=${NEW_ENV:-}
    # The log is reused by every run: the last node's " ready: " must not be read as this one's
    # (the redirection below truncates it only once the new process is forked).
    rm -f "$WORK/node.log"
    # shellcheck disable=SC2086 # VAR=value words
    env $vars taskset -c 0 "$binary" node --listen "127.0.0.1:$port" --shards 1 --cpus 0 \
        --grpc "127.0.0.1:$((port + 2))" "${NODE_FLAGS[@]}" >"$WORK/node.log" 2>&1 &
    PID=$!
    for _ in $(seq 200); do
        grep -q " ready: " "$WORK/node.log" 2>/dev/null && break
        kill -0 "$PID" 2>/dev/null || { cat "$WORK/node.log" >&2; exit 1; }
        sleep 0.1
    done
    for workload in $WORKLOADS; do
        set -- ${workload/:/ }
        # shellcheck disable=SC2086
        env $vars "$BENCH" --target kvmesh --addr "127.0.0.1:$port" --server-pid "$PID" --label "$label" \
            --cpus 1 --json --connections 50 --keys 100000 --value-size 100 --read-ratio "$1" \
            --pipeline "$2" --duration "$DURATION" --warmup "$WARMUP" >"$WORK/run.out"
        tail -n 1 "$WORK/run.out" >>"$WORK/round-$round.jsonl"
        log "$label read-ratio $1 pipeline $2 -> $(grep '^throughput:' "$WORK/run.out" | tr -s ' ')"
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}

NODE_FLAGS=("$@")
# With the node, as bench/lib.sh builds: kvmesh-bench alone unifies other features and would
# rebuild every dependency.
cargo build --release -q -p kvmesh -p kvmesh-bench
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    run base "$BASE" "$round"
    run new "$NEW" "$round"
done
echo "base: $BASE ${BASE_ENV:-}; new: $NEW ${NEW_ENV:-}; node flags: ${NODE_FLAGS[*]:-(none)}; $ROUNDS rounds of $DURATION."
for round in $(seq "$ROUNDS"); do
    "$BENCH" table --title "round $round" "$WORK/round-$round.jsonl"
done
