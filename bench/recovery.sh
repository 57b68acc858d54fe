#!/usr/bin/env bash
# Recovery speed and the disk bound of snapshots (issue 7), on this machine's disk.
#
#   bench/recovery.sh                        # from anywhere; takes a few minutes
#   KEYS=1000000 WRITES=10000000 bench/recovery.sh
#   DATA=/mnt/ssd/tmp bench/recovery.sh      # data on another disk (default: a temp dir)
#
# What it does (one node, 1 shard pinned to core 0, the client on core 1):
#   1. restart time with KEYS keys of 100 bytes (default 1,000,000), filled by kvmesh-bench
#      (--prefill-only, 50 connections, pipeline 16, --fsync never to fill fast; the records are
#      the same as with always):
#        a. log only: SIGKILL, restart, every record replayed from the log;
#        b. snapshot: `kvmesh snapshot`, SIGKILL, restart: the snapshot is loaded, nothing replayed;
#      each restart is timed from spawn to the node's "ready" line, and the node's own report
#      gives records (or entries) per second;
#   2. the disk bound: a fresh node (--wal-segment-size 64MiB, --snapshot-factor 4, the
#      defaults), WRITES SETs (default 10,000,000) over 10,000 keys of 100 bytes, pipeline 16,
#      --fsync never; the data directory's size is sampled every second; then SIGKILL, restart,
#      and the number of keys must be exactly 10,000.
# Prints Markdown. Everything it starts is stopped when it exits, however it exits.
set -euo pipefail

cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
WRITES=${WRITES:-10000000}
WORK=$(mktemp -d "${DATA:-${TMPDIR:-/tmp}}/kvmesh-recovery.XXXXXX")
PID=""
SAMPLER=""

cleanup() {
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "recovery: $*" >&2; }

# start_node DIR NAME [FLAGS...]: sets PID, ADDR; waits for " ready: "; sets READY_MS.
start_node() {
    local dir=$1 name=$2 port t0 t1
    shift 2
    port=$("$BENCH" free-port --count 3)
    ADDR=127.0.0.1:$port
    t0=$(date +%s%N)
    "$KVMESH" node --listen "$ADDR" --grpc "127.0.0.1:$((port + 2))" --shards 1 --cpus 0 \
        --max-memory 4GiB --data-dir "$dir" "$@" >"$WORK/$name.log" 2>&1 &
    PID=$!
    for _ in $(seq 12000); do
        if grep -q " ready: " "$WORK/$name.log" 2>/dev/null; then
            t1=$(date +%s%N)
            READY_MS=$(( (t1 - t0) / 1000000 ))
            return 0
        fi
        if ! kill -0 "$PID" 2>/dev/null; then
            log "node exited:"; cat "$WORK/$name.log" >&2; exit 1
        fi
        sleep 0.01
    done
    log "node not ready after 120 s:"; cat "$WORK/$name.log" >&2; exit 1
}

kill_node() {
    kill -9 "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}

keys_held() {
    "$KVMESH" stats --addr "$ADDR" --json | grep -o '"total":{"keys":[0-9]*' | grep -o '[0-9]*$' ||
        { log "kvmesh stats failed"; exit 1; }
}

log "building kvmesh and kvmesh-bench (release)"
cargo build --release -q -p kvmesh -p kvmesh-bench
BENCH=target/release/kvmesh-bench
KVMESH=target/release/kvmesh

# 1. Restart time with KEYS keys.
D=$WORK/filled
start_node "$D" fill --fsync never
log "filling $KEYS keys of 100 bytes"
if ! "$BENCH" --addr "$ADDR" --cpus 1 --connections 50 --pipeline 16 --keys "$KEYS" \
    --value-size 100 --prefill-only >"$WORK/fill.out" 2>&1; then
    log "the fill failed:"; cat "$WORK/fill.out" "$WORK/fill.log" >&2; exit 1
fi
held=$(keys_held)
log_bytes=$(du -sb "$D" | cut -f1)
kill_node
start_node "$D" replay --fsync never
replay_ms=$READY_MS
replay_line=$(grep "shard 0: replayed" "$WORK/replay.log")
replay_held=$(keys_held)
if ! "$KVMESH" snapshot --addr "$ADDR" >"$WORK/snapshot.out" 2>&1; then
    log "kvmesh snapshot failed:"; cat "$WORK/snapshot.out" >&2; exit 1
fi
snap_line=$(cat "$WORK/snapshot.out")
kill_node
start_node "$D" loaded --fsync never
loaded_ms=$READY_MS
loaded_line=$(grep "shard 0: loaded snapshot" "$WORK/loaded.log")
loaded_tail=$(grep "shard 0: replayed" "$WORK/loaded.log")
loaded_held=$(keys_held)
kill_node

rate() { # rate COUNT MS
    awk -v n="$1" -v ms="$2" 'BEGIN { if (ms == 0) ms = 1; printf "%.2f M/s", n / ms / 1000 }'
}
replayed=$(echo "$replay_line" | grep -o 'replayed [0-9]*' | grep -o '[0-9]*')
replay_own=$(echo "$replay_line" | grep -o 'in [0-9]* ms' | grep -o '[0-9]*')
entries=$(echo "$loaded_line" | grep -o '([0-9]* entries' | grep -o '[0-9]*')
load_own=$(echo "$loaded_line" | grep -o 'in [0-9]* ms' | grep -o '[0-9]*$' || true)
load_own=$(echo "$loaded_line" | sed -E 's/.* in ([0-9]+) ms$/\1/')

# 2. The disk bound over WRITES overwrites of 10,000 keys.
D2=$WORK/bounded
start_node "$D2" bounded --fsync never
(
    while true; do
        du -sb "$D2" 2>/dev/null | cut -f1 >>"$WORK/du"
        sleep 1
    done
) &
SAMPLER=$!
log "$WRITES writes over 10,000 keys"
t0=$(date +%s)
if ! "$BENCH" --addr "$ADDR" --cpus 1 --connections 50 --pipeline 16 --keys 10000 \
    --value-size 100 --read-ratio 0 --no-prefill --requests "$WRITES" --json \
    >"$WORK/bounded.out" 2>&1; then
    log "the writes failed:"; cat "$WORK/bounded.out" >&2; exit 1
fi
t1=$(date +%s)
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""
logged=$("$KVMESH" stats --addr "$ADDR" --json | grep -o '"total":{.*' | grep -o '"wal_bytes":[0-9]*' | cut -d: -f2)
snapshots=$(grep -c "snapshot .*removed" "$WORK/bounded.log" || true)
final_disk=$(du -sb "$D2" | cut -f1)
kill_node
start_node "$D2" bounded-restart --fsync never
bounded_ms=$READY_MS
bounded_held=$(keys_held)
kill_node
peak=$(sort -n "$WORK/du" | tail -n 1)
samples=$(wc -l <"$WORK/du")
# Peak in the first and the second half of the run: a bounded log stops growing.
half=$((samples / 2))
peak1=$(head -n "$half" "$WORK/du" | sort -n | tail -n 1)
peak2=$(tail -n +"$((half + 1))" "$WORK/du" | sort -n | tail -n 1)

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "## Recovery and snapshots, $(date -u +%Y-%m-%d)"
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r); data on $(df --output=source,fstype "$WORK" | tail -n 1 | tr -s ' ')."
echo "kvmesh: $(git describe --always --dirty 2>/dev/null || echo "no commit"). Command: \`KEYS=$KEYS WRITES=$WRITES bench/recovery.sh\`. One shard on core 0."
echo
echo "### Restart with $KEYS keys of 100 bytes ($held held, data directory $(mib "$log_bytes"))"
echo
echo "| restart from | keys after | node's report | recovery alone | records/s | spawn to ready |"
echo "| --- | ---: | --- | ---: | ---: | ---: |"
echo "| log only | $replay_held | replayed $replayed records | ${replay_own} ms | $(rate "$replayed" "$replay_own") | ${replay_ms} ms |"
echo "| snapshot | $loaded_held | loaded $entries entries | ${load_own} ms | $(rate "$entries" "$load_own") | ${loaded_ms} ms |"
echo
echo "- \`kvmesh snapshot\`: $snap_line"
echo "- $loaded_line"
echo "- $loaded_tail"
echo
echo "### Disk use under $WRITES overwrites of 10,000 keys of 100 bytes"
echo
echo "| written to the log | snapshots | peak disk, first half | peak disk, second half | at the end | keys after SIGKILL + restart | restart |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "| $(mib "$logged") in $((t1 - t0)) s | $snapshots | $(mib "$peak1") | $(mib "$peak2") | $(mib "$final_disk") | $bounded_held | ${bounded_ms} ms |"
echo
echo "Bound with the defaults (64 MiB segments, factor 4, live data below one segment): about"
echo "6 segments of log plus two snapshots, i.e. ~390 MiB; peak over the whole run: $(mib "$peak")."
