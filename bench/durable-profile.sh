#!/usr/bin/env bash
# Where a durable node's CPU goes per SET: perf record -g (cpu-clock) of the node under load,
# summed into a few kernel and user-space paths, in microseconds per request.
#
#   bench/durable-profile.sh                       # --fsync never and always, and no --data-dir; pipeline 1
#   MODES="always" PIPELINE=16 bench/durable-profile.sh
#   KVMESH_BIN=/tmp/kvmesh-main NODE_FLAGS="--wal-syncs-in-flight 1" bench/durable-profile.sh
#   SYMBOLS=12 MODES="none always" PIPELINE=16 bench/durable-profile.sh   # and the top user-space symbols
#   KEEP=/tmp/prof bench/durable-profile.sh    # keeps each mode's perf data as KEEP/cpu.MODE.data
#
# For each mode in MODES (`none`: no --data-dir; `always`, `interval`, `never`: --fsync MODE on
# a fresh data directory; default "none never always") it starts a node (1 shard, core 0,
# NODE_FLAGS added), fills 100,000 keys with kvmesh-bench (core 1), then runs SETs of 100 bytes
# from 50 connections at PIPELINE (default 1) for 9 s, and records the node (all its threads)
# for 5 s from 2 s in. It prints one line per mode: the rate and the CPU per request the client
# measured, the log's records per write and per fdatasync over the run, then the profile's
# CPU per request and, for each path, the part of it (children included, so paths overlap:
# the write is inside io_uring_submit). With SYMBOLS=N it also prints the N user-space symbols
# that took the most CPU per request (self time, inlined callees included, so a symbol's time
# is where its instructions or their cache misses were). Needs perf (perf_event_paranoid <= 1,
# or root).
set -euo pipefail

. "$(dirname "$0")/lib.sh"
MODES=${MODES:-none never always}
PIPELINE=${PIPELINE:-1}
PATHS="__send __libc_recv io_uring_submit io_write iowrite16 io_cqring_wait task_work_run"

bench_init durable-profile
KVMESH=${KVMESH_BIN:-$KVMESH}
command -v perf >/dev/null || { log "needs perf"; exit 1; }

# wal_counters: "records writes syncs" of the node's log.
wal_counters() {
    local f
    "$KVMESH" stats --addr "$SERVER_ADDR" --json | grep -o '"total":{.*}' >"$WORK/stats.json"
    for f in wal_records wal_writes wal_syncs; do
        printf '%s ' "$(grep -o "\"$f\":[0-9]*" "$WORK/stats.json" | cut -d: -f2)"
    done
}

for mode in $MODES; do
    durable=()
    [ "$mode" = none ] || durable=(--data-dir "$(mktemp -d "$WORK/data.XXXX")" --fsync "$mode")
    # shellcheck disable=SC2086 # node flags, one word each
    start_kvmesh 1 0 "${durable[@]}" ${NODE_FLAGS:-}
    flags=(--target kvmesh --addr "$SERVER_ADDR" --cpus 1 --connections 50 --keys 100000
        --value-size 100 --read-ratio 0 --pipeline "$PIPELINE")
    "$BENCH" "${flags[@]}" --prefill-only --timeout 10s >/dev/null 2>&1
    before=$(wal_counters)
    "$BENCH" "${flags[@]}" --no-prefill --server-pid "$SERVER_PID" --duration 8s --warmup 1s \
        --json >"$WORK/run.out" 2>"$WORK/run.err" &
    load=$!
    sleep 2
    perf record -q -g -e cpu-clock -p "$SERVER_PID" -o "$WORK/cpu.data" -- sleep 5 \
        >/dev/null 2>&1
    wait "$load" || { cat "$WORK/run.err" >&2; exit 1; }
    after=$(wal_counters)
    stop_server "$SERVER_PID"
    [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP" && cp "$WORK/cpu.data" "$KEEP/cpu.$mode.data"; }
    ops=$(tail -n 1 "$WORK/run.out" | grep -o '"ops_per_sec":[0-9.]*' | cut -d: -f2)
    cpu=$(tail -n 1 "$WORK/run.out" | grep -o '"server_cpu_us_per_req":[0-9.]*' | cut -d: -f2)
    # shellcheck disable=SC2086 # three numbers each
    per=$(echo $before $after | awk -v m="$mode" '{ r = $4 - $1; w = $5 - $2; s = $6 - $3
        if (m == "never") s = 0 # only rotations sync
        printf "records/write %s, records/sync %s", (w > 0 ? sprintf("%.1f", r / w) : "-"),
            (s > 0 ? sprintf("%.1f", r / s) : "-") }')
    samples=$(perf script -i "$WORK/cpu.data" -F comm 2>/dev/null | wc -l)
    # cpu-clock samples at 4 kHz over 5 s: 250 us each.
    us_per_sample=$(awk -v o="$ops" 'BEGIN { printf "%.9f", 250 / (o * 5) }')
    perf report -i "$WORK/cpu.data" --children --sort sym --stdio -g none 2>/dev/null \
        >"$WORK/children.txt"
    perf report -i "$WORK/cpu.data" --sort comm --stdio -g none 2>/dev/null >"$WORK/comm.txt"
    {
        printf '%s pipeline %s: %.0f SET/s, %.2f us CPU/req (client), %s; profile %.2f us/req:' \
            "$mode" "$PIPELINE" "$ops" "$cpu" "$per" "$(awk -v n="$samples" -v u="$us_per_sample" 'BEGIN { print n * u }')"
        for path in $PATHS; do
            awk -v p="$path" -v n="$samples" -v u="$us_per_sample" \
                '$3 == p || $4 == p { v = $1; sub("%", "", v); printf " %s %.2f", p, v / 100 * n * u; exit }' \
                "$WORK/children.txt"
        done
        # io_uring's worker threads (iou-wrk-*: the fdatasync calls) and the shard's thread.
        awk -v n="$samples" -v u="$us_per_sample" '/%/ && $3 ~ /^iou-wrk/ {
            v = $1; sub("%", "", v); t += v } END { printf " io-wq-threads %.2f", t / 100 * n * u }' \
            "$WORK/comm.txt"
        perf report -i "$WORK/cpu.data" --no-children --sort dso --stdio -g none 2>/dev/null |
            awk -v n="$samples" -v u="$us_per_sample" '/%/ && $2 !~ /kernel/ {
                v = $1; sub("%", "", v); t += v } END { printf " user-space %.2f\n", t / 100 * n * u }'
    } | tee -a "$WORK/lines"
    if [ "${SYMBOLS:-0}" -gt 0 ]; then
        perf report -i "$WORK/cpu.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
            awk -v n="$samples" -v u="$us_per_sample" -v top="$SYMBOLS" '/%/ && $2 !~ /kernel/ && shown++ < top {
                v = $1; sub("%", "", v)
                printf "    %.3f us/req  %s\n", v / 100 * n * u, substr($0, index($0, $4)) }'
    fi
done
