#!/usr/bin/env bash
# What a membership change streams, and how fast: node 1 holds KEYS keys and node 2 joins the
# ring {1} -> {1, 2} at replicas 1, so about half the keys move. Prints the bytes streamed
# against the theoretical minimum (key + value bytes of the keys that gained an owner), the
# time and the rate, unthrottled and at --stream-rate RATE.
#
#   bench/stream.sh                                    # KEYS=200000 VALUE=1000 RATE=16 SHARDS=1
#   KEYS=500000 VALUE=100 bench/stream.sh
#
# The control plane that starts a stream in a running cluster (issue 12's topology) is not in
# this build, so the stream is started through the engine's test hook (KVMESH_TEST_STREAM_DIR,
# src/node/stream_hook.rs), with the same engine a join runs. Placement: node 1 (the source)
# on core 0, node 2 (the destination) and the prefill client on core 1; both durable with
# --fsync always (a batch is acknowledged once its records are synced on node 2).
set -euo pipefail
# The release build compiles the test hook only with this feature.
KVMESH_FEATURES=kvmesh/test-hooks
. "$(dirname "$0")/lib.sh"
bench_init stream
KEYS=${KEYS:-200000}
VALUE=${VALUE:-1000}
RATE=${RATE:-16}
SHARDS=${SHARDS:-1}

# run_once ROUND RATE: fresh nodes, prefill, one stream; prints a Markdown table row.
run_once() {
    local round=$1 rate=$2 hook=$WORK/hook-$1 one two start end shard done_files
    mkdir -p "$hook" "$WORK/d1-$round" "$WORK/d2-$round"
    KVMESH_TEST_STREAM_DIR=$hook start_kvmesh "$SHARDS" 0 --id 1 --data-dir "$WORK/d1-$round" \
        --stream-rate "$rate" --forward-timeout 10s
    one=$SERVER_ADDR
    local one_pid=$SERVER_PID
    start_kvmesh "$SHARDS" 1 --id 2 --data-dir "$WORK/d2-$round"
    two=$SERVER_ADDR
    local two_pid=$SERVER_PID
    "$BENCH" --target kvmesh --addr "$one" --keys "$KEYS" --value-size "$VALUE" --prefill-only \
        --cpus 1 --connections 8 --pipeline 16 >/dev/null 2>&1
    printf 'id=1\naction=stream\nepoch=2\nreplicas=1\nold=1=%s\nnew=1=%s,2=%s\n' \
        "$one" "$one" "$two" >"$hook/.move"
    start=$(date +%s.%N)
    mv "$hook/.move" "$hook/move"
    for shard in $(seq 0 $((SHARDS - 1))); do
        for _ in $(seq 6000); do
            [ -f "$hook/done-1-$shard" ] && break
            sleep 0.05
        done
    done
    end=$(date +%s.%N)
    done_files=$(cat "$hook"/done-1-*)
    if grep -q '^error' <<<"$done_files"; then
        log "the stream failed: $done_files"; exit 1
    fi
    sum() { grep "^$1=" <<<"$done_files" | cut -d= -f2 | paste -sd+ | bc; }
    awk -v rate="$rate" -v keys="$(sum keys_acked)" -v sent="$(sum bytes_sent)" \
        -v min="$(sum planned_bytes)" -v retries="$(sum retries)" -v s="$start" -v e="$end" \
        'BEGIN { t = e - s; printf "| %s | %d | %d | %d | %.4f | %d | %.2f | %.1f |\n",
                 (rate == 0 ? "unlimited" : rate " MiB/s"), keys, min, sent, sent / min,
                 retries, t, sent / t / 1048576 }'
    stop_server "$one_pid"
    stop_server "$two_pid"
}

log "KEYS=$KEYS VALUE=$VALUE SHARDS=$SHARDS, ring {1} -> {1, 2}, replicas 1"
echo "kvmesh $(kvmesh_version), $(machine_line)"
echo
echo "| --stream-rate | keys moved | minimum bytes | bytes streamed | streamed / minimum | batches resent | seconds | MiB/s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
run_once 1 0
run_once 2 "$RATE"
