#!/usr/bin/env bash
# Resident memory per key, kvmesh against Redis: the memory part of bench/compare.sh alone.
#
#   bench/memory.sh                                   # about a minute
#   KEYS=200000 VALUE_SIZE=1000 bench/memory.sh       # another shape of data
#   KVMESH_BASE=/path/to/older/kvmesh bench/memory.sh # adds that binary's row, same run
#
# What it does: builds in release (lib.sh), then for redis-server (no persistence, pinned to
# core 0) and a kvmesh node (1 shard on core 0, no --data-dir), each started fresh, loads
# KEYS keys (default 1,000,000) of VALUE_SIZE bytes (default 100) with kvmesh-bench
# --prefill-only from core 1 and records the server's RSS after the load minus before, per
# key. With KVMESH_BASE it measures that kvmesh binary the same way, between the two. Prints
# the table and each kvmesh row's ratio to Redis.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
KEYS=${KEYS:-1000000}
VALUE_SIZE=${VALUE_SIZE:-100}

# measure LABEL TARGET: one prefill-only run against the current server.
measure() {
    local label=$1 target=$2
    if ! "$BENCH" --target "$target" --addr "$SERVER_ADDR" --server-pid "$SERVER_PID" \
        --label "$label" --cpus 1 --json --prefill-only --keys "$KEYS" \
        --value-size "$VALUE_SIZE" --connections 8 --pipeline 32 \
        >"$WORK/run.out" 2>"$WORK/run.err"; then
        log "kvmesh-bench failed:"; cat "$WORK/run.err" "$WORK/run.out" >&2; exit 1
    fi
    tail -n 1 "$WORK/run.out" >>"$WORK/memory.jsonl"
    log "$label -> $(grep -E '^memory:' "$WORK/run.out" | head -n 1 | tr -s ' ')"
}

bench_init memory
ensure_redis

log "memory: $KEYS keys of $VALUE_SIZE bytes into a fresh server each"
start_redis 0 --appendonly no
measure redis redis
stop_server "$SERVER_PID"
if [ -n "${KVMESH_BASE:-}" ]; then
    built=$KVMESH
    KVMESH=$KVMESH_BASE
    start_kvmesh 1 0
    measure kvmesh-base kvmesh
    stop_server "$SERVER_PID"
    KVMESH=$built
fi
start_kvmesh 1 0
measure kvmesh kvmesh
stop_server "$SERVER_PID"

echo "## Memory per key, kvmesh vs Redis, $(date -u +%Y-%m-%d)"
echo
machine_line
echo "Redis: $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-) (no persistence). kvmesh: $(kvmesh_version) (in-memory, 1 shard)."
echo "Command: \`bench/memory.sh\` (KEYS=$KEYS, VALUE_SIZE=$VALUE_SIZE${KVMESH_BASE:+, KVMESH_BASE=$KVMESH_BASE})."
echo
"$BENCH" table --title "Memory: $KEYS keys of $VALUE_SIZE bytes" "$WORK/memory.jsonl"
echo
# per_key LABEL: that row's RSS per key, or nothing when there is no such row.
per_key() {
    { grep "\"label\":\"$1\"" "$WORK/memory.jsonl" || true; } \
        | grep -o '"rss_bytes_per_key":[0-9.]*' | cut -d: -f2 || true
}
redis=$(per_key redis)
for label in kvmesh-base kvmesh; do
    ours=$(per_key "$label")
    if [ -n "$ours" ]; then
        awk -v l="$label" -v o="$ours" -v r="$redis" \
            'BEGIN { printf "%s/redis bytes per key: %.2fx\n", l, o / r }'
    fi
done
