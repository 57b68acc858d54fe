#!/usr/bin/env bash
# kvmesh and Redis, measured side by side by the same client (kvmesh-bench), on this machine.
#
#   bench/compare.sh                                   # from anywhere; about 8 minutes
#   ROUNDS=5 DURATION=10s WARMUP=2s bench/compare.sh   # more, longer runs
#
# What it does:
#   - installs redis-server if it is missing (Debian's package also starts a service on 6379;
#     it is left alone: this script runs its own private instance on a free port);
#   - builds kvmesh and kvmesh-bench in release;
#   - headline, per core: redis-server (no persistence), a kvmesh node (1 shard, no
#     --data-dir: pure in-memory) and the raw probes (`kvmesh-bench probe-server`: one bare
#     epoll loop, and one bare io_uring loop, answering kvmesh's frames from a plain hash map:
#     the network path's physical limit) each pinned to core 0, the client pinned to core 1;
#     the four run side by side and each workload is run against all four in turn, so a change
#     in the machine's load hits them alike (only the first workload prefills the 100k keys;
#     the servers keep them); all four workloads are run in ROUNDS rounds (default 3), and the
#     table gives each figure's median over the rounds and each ratio as the median of the
#     rounds' own ratios, with their range: one run of DURATION on this VM moves by 10-20%;
#     ratios kvmesh/redis, kvmesh/probe and kvmesh/probe-uring;
#   - second table: kvmesh with 2 shards on cores 0,1, the client sharing both cores (one
#     round);
#   - workloads: 100-byte values, 100k keys, 50 connections, GET-only and SET-only, pipeline 1
#     and 16; throughput, p99, server CPU time per request (utime+stime from /proc over the
#     measured phase, divided by the requests) and errors, with kvmesh/redis ratios;
#   - memory: server RSS after loading 1M keys of 100 bytes minus RSS before, per key.
# Everything it starts is stopped when it exits, however it exits.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "compare: ROUNDS must be a whole number of at least 1, not '$ROUNDS'" >&2; exit 2; }
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}

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

# run_workloads RESULTS CLIENT_CPUS [--no-prefill]: the four workloads of a table, each
# against every server of SERVERS_UNDER_TEST ("LABEL TARGET PID ADDR" words) in turn.
# Only the first workload prefills, unless told not to: the servers keep every key.
run_workloads() {
    local results=$1 cpus=$2 server prefill=("${@:3}")
    for ratio in 1 0; do
        for pipeline in 1 16; do
            for server in "${SERVERS_UNDER_TEST[@]}"; do
                # shellcheck disable=SC2086 # LABEL TARGET PID ADDR words
                set -- $server
                SERVER_PID=$3 SERVER_ADDR=$4
                run_bench "$results" "$1" "$2" "$cpus" --connections 50 --keys 100000 \
                    --value-size 100 --read-ratio "$ratio" --pipeline "$pipeline" \
                    --duration "$DURATION" --warmup "$WARMUP" "${prefill[@]}"
            done
            prefill=(--no-prefill)
        done
    done
}

bench_init compare
ensure_redis

log "headline: one core each (server on core 0, client on core 1), $ROUNDS rounds, $DURATION per run after $WARMUP warmup"
start_redis 0 --appendonly no
SERVERS_UNDER_TEST=("redis redis $SERVER_PID $SERVER_ADDR")
start_kvmesh 1 0
SERVERS_UNDER_TEST+=("kvmesh kvmesh $SERVER_PID $SERVER_ADDR")
start_probe 0 epoll
SERVERS_UNDER_TEST+=("probe kvmesh $SERVER_PID $SERVER_ADDR")
start_probe 0 uring
SERVERS_UNDER_TEST+=("probe-uring kvmesh $SERVER_PID $SERVER_ADDR")
run_workloads "$WORK/headline.jsonl" 1
for round in $(seq 2 "$ROUNDS"); do
    log "headline: round $round of $ROUNDS"
    run_workloads "$WORK/headline.jsonl" 1 --no-prefill
done
for server in "${SERVERS_UNDER_TEST[@]}"; do
    # shellcheck disable=SC2086
    set -- $server
    stop_server "$3"
done

log "second table: kvmesh with 2 shards on cores 0,1, client sharing both cores"
start_kvmesh 2 0,1
SERVERS_UNDER_TEST=("kvmesh-2-shards kvmesh $SERVER_PID $SERVER_ADDR")
run_workloads "$WORK/shards.jsonl" 0,1
stop_server "$SERVER_PID"

log "memory: 1M keys of 100 bytes into a fresh server"
start_redis 0 --appendonly no
run_bench "$WORK/memory.jsonl" redis redis 1 --prefill-only --keys 1000000 --value-size 100 \
    --connections 8 --pipeline 32
stop_server "$SERVER_PID"
start_kvmesh 1 0
run_bench "$WORK/memory.jsonl" kvmesh kvmesh 1 --prefill-only --keys 1000000 --value-size 100 \
    --connections 8 --pipeline 32
stop_server "$SERVER_PID"

echo "## kvmesh vs Redis, $(date -u +%Y-%m-%d)"
echo
machine_line
echo "Redis: $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-) (no persistence). kvmesh: $(kvmesh_version) (in-memory, no --data-dir). probe: \`kvmesh-bench probe-server --mode epoll\`, probe-uring: \`--mode uring\`."
echo "Command: \`bench/compare.sh\` (ROUNDS=$ROUNDS, DURATION=$DURATION, WARMUP=$WARMUP per run). CPU us/req is the server's user+system time over the measured phase divided by the requests."
echo
"$BENCH" table --title "Per core: server pinned to core 0 (kvmesh: 1 shard), client on core 1" \
    --ratio kvmesh/redis --ratio kvmesh/probe --ratio kvmesh/probe-uring "$WORK/headline.jsonl"
echo
"$BENCH" table --title "kvmesh with 2 shards on cores 0,1, client sharing both cores" "$WORK/shards.jsonl"
echo
"$BENCH" table --title "Memory: 1M keys of 100 bytes" "$WORK/memory.jsonl"
