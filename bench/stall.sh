#!/usr/bin/env bash
# A loop of fresh nodes under short bursts, to catch stalled connections: written for
# `GLOMMIO_DEFER_TASKRUN` (vendor/README.md), whose stalls turned out to be CPU starvation
# that happens with it off too (bench/PERFORMANCE.md, "Task work deferred to the reactor").
#
#   NODES=40 bench/stall.sh                                     # node and client with the mode (the default)
#   STALL_ENV=GLOMMIO_DEFER_TASKRUN=0 NODES=40 bench/stall.sh     # without it
#   KVMESH_BIN=/tmp/b/kvmesh BENCH_BIN=/tmp/b/kvmesh-bench bench/stall.sh  # binaries built elsewhere
#
# NODES times: a fresh node (1 shard, core 0, no --data-dir) and, from kvmesh-bench on core 1,
# SET at pipeline 16, GET at pipeline 16 and GET at pipeline 1, DURATION each (default 2s), 50
# connections, 100k keys (the first run prefills them). STALL_ENV (VAR=value words) is set for
# node and client. A run is *slow* below SLOW ops/s (default 5000: a healthy run on this VM does
# 10k-150k even beside other engineers' builds) and *failed* if kvmesh-bench exits with an error
# (`no reply ... within 1s`). During every GET pipeline-1 run it snapshots node and client three
# times, 0.6 s apart: each thread's state, wchan and kernel stack, each io_uring's fdinfo (heads,
# tails, the polls armed, the overflow list) and the sockets' queues (`ss`); it keeps the
# snapshots of slow runs, and after a failed run it takes the same snapshot of the node, then
# counts its io_uring events for 2 s (`perf stat`) while one new connection tries a request. It
# prints one line per node and a summary; the snapshots stay in DIAG (default a new directory
# under /tmp, printed at the end). Exits 1 if any run was slow or failed.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
NODES=${NODES:-20}
DURATION=${DURATION:-2s}
SLOW=${SLOW:-5000}
bench_init stall
KVMESH=${KVMESH_BIN:-$KVMESH}
BENCH=${BENCH_BIN:-$BENCH}
DIAG=${DIAG:-$(mktemp -d -t kvmesh-stall.XXXXXX)}
read -r -a VARS <<<"${STALL_ENV:-}"

# snapshot PID FILE: PID's threads and io_uring instances, as the kernel sees them.
snapshot() {
    local t f
    {
        for t in /proc/"$1"/task/*; do
            echo "== thread $(basename "$t") $(cat "$t/comm") state=$(awk '{print $3}' "$t/stat")" \
                "wchan=$(cat "$t/wchan") schedstat=$(cat "$t/schedstat")"
            cat "$t/stack" 2>/dev/null || true
        done
        for f in /proc/"$1"/fd/*; do
            [ "$(readlink "$f")" = "anon_inode:[io_uring]" ] || continue
            echo "== io_uring fd $(basename "$f")"
            cat /proc/"$1"/fdinfo/"$(basename "$f")"
        done
    } >"$2" 2>&1 || true
}

# sample NODE_PID PORT DIR: three snapshots of node, client and sockets, 0.6 s apart.
sample() {
    local k client
    mkdir -p "$3"
    for k in 1 2 3; do
        sleep 0.6
        snapshot "$1" "$3/node-$k.txt"
        client=$(pgrep -n -f "kvmesh-bench --target kvmesh --addr 127.0.0.1:$2 " || true)
        [ -z "$client" ] || snapshot "$client" "$3/client-$k.txt"
        ss -tn "( sport = :$2 or dport = :$2 )" >"$3/sockets-$k.txt" 2>&1 || true
    done
}

# after_failure NODE_PID PORT DIR: the node's state, and its io_uring events while a new
# connection tries one request.
after_failure() {
    local perf_pid
    mkdir -p "$3"
    snapshot "$1" "$3/node.txt"
    ss -tn "( sport = :$2 or dport = :$2 )" >"$3/sockets.txt" 2>&1 || true
    perf stat -e 'io_uring:*' -e syscalls:sys_enter_io_uring_enter -p "$1" -o "$3/perf.txt" \
        -- sleep 2 >/dev/null 2>&1 &
    perf_pid=$!
    sleep 0.3
    env "${VARS[@]}" taskset -c 1 "$BENCH" --target kvmesh --addr "127.0.0.1:$2" --cpus 1 \
        --connections 1 --pipeline 1 --keys 100 --value-size 100 --prefill-only \
        >"$3/new-connection.txt" 2>&1 || true
    wait "$perf_pid" || true
    snapshot "$1" "$3/node-after.txt"
}

slow=0 failed=0 runs=0
for i in $(seq "$NODES"); do
    port=$("$BENCH" free-port --count 3)
    SERVER_LOG=$WORK/node-$i.log
    env "${VARS[@]}" taskset -c 0 "$KVMESH" node --listen "127.0.0.1:$port" --shards 1 --cpus 0 \
        --grpc "127.0.0.1:$((port + 2))" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    track "$SERVER_PID"
    wait_for_log "$SERVER_PID" "$SERVER_LOG" " ready: "
    line="node $i:"
    prefill=()
    for workload in 0:16 1:16 1:1; do
        # shellcheck disable=SC2086 # READ_RATIO PIPELINE
        set -- ${workload/:/ }
        runs=$((runs + 1))
        sampler=""
        if [ "$2" = 1 ]; then
            sample "$SERVER_PID" "$port" "$WORK/sample" &
            sampler=$!
        fi
        status=0
        env "${VARS[@]}" taskset -c 1 "$BENCH" --target kvmesh --addr "127.0.0.1:$port" --cpus 1 \
            --connections 50 --keys 100000 --value-size 100 --read-ratio "$1" --pipeline "$2" \
            --duration "$DURATION" --warmup 0s "${prefill[@]}" >"$WORK/run.out" 2>&1 || status=$?
        prefill=(--no-prefill)
        [ -z "$sampler" ] || wait "$sampler" || true
        rate=$(awk '/^throughput:/ {print $2}' "$WORK/run.out")
        if [ "$status" != 0 ]; then
            failed=$((failed + 1))
            line="$line FAILED($(tail -n 1 "$WORK/run.out"))"
            after_failure "$SERVER_PID" "$port" "$DIAG/node-$i-$1-$2-failed"
        elif [ "${rate:-0}" -lt "$SLOW" ]; then
            slow=$((slow + 1))
            line="$line SLOW:$rate"
            [ -z "$sampler" ] || cp -r "$WORK/sample" "$DIAG/node-$i-$1-$2-slow"
        else
            line="$line $rate"
        fi
        rm -rf "$WORK/sample"
    done
    echo "$line (SET p16, GET p16, GET p1 ops/s)"
    stop_server "$SERVER_PID"
done
echo "stall: ${STALL_ENV:-(no env)}: $runs runs on $NODES fresh nodes, $slow slow (< $SLOW ops/s), $failed failed; snapshots in $DIAG"
[ $((slow + failed)) = 0 ]
