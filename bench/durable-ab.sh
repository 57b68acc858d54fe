#!/usr/bin/env bash
# Two kvmesh builds (or one build with two sets of node flags), durable SETs, in interleaved rounds:
# what a change to the write-ahead log costs or gains, next to Redis's AOF.
#
#   bench/durable-ab.sh BASE_BINARY NEW_BINARY
#   ROUNDS=6 PIPELINES="1 16" FSYNC=always bench/durable-ab.sh /tmp/kvmesh-main target/release/kvmesh
#   BASE_FLAGS="--wal-syncs-in-flight 1" bench/durable-ab.sh target/release/kvmesh target/release/kvmesh
#
# BASE_FLAGS and NEW_FLAGS (space-separated node flags, empty by default) are given to that
# side's node only, and so are BASE_ENV and NEW_ENV (space-separated VAR=value words, e.g.
# BASE_ENV=GLOMMIO_DEFER_TASKRUN=0), so one binary can be compared with a switch off and on.
# Each round runs, per pipeline in PIPELINES (default "1"), Redis
# (`--appendonly yes --appendfsync always`, unless REDIS=0), then BASE, then NEW: a fresh server
# on a fresh data directory on core 0 (kvmesh: 1 shard, `--fsync FSYNC`, default always),
# kvmesh-bench on core 1, SET only, 50 connections, 100,000 keys, 100-byte values, closed loop,
# DURATION (default 5s) after WARMUP (default 2s), each after a prefill run of its own (every
# key SET once). It prints one line per run (with, over the warm-up and measured phase, the log's
# records and writes per fdatasync, sync markers included, and its mean fdatasync latency as the
# log measures it, and the load average; "ERRORS" when the client saw any), then the median of
# each side over the rounds, with how many of its runs had errors.
# kvmesh-bench is taken from this checkout's release build.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
[ $# -ge 2 ] || { sed -n 2,21p "$0" >&2; exit 2; }
BASE=$(realpath "$1") NEW=$(realpath "$2")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
PIPELINES=${PIPELINES:-1}
FSYNC=${FSYNC:-always}
REDIS=${REDIS:-1}

json_field() {
    grep -o "\"$2\":[0-9.e+-]*" "$1" | head -n 1 | cut -d: -f2
}

# wal_counters: "records writes syncs sync_us" of the current kvmesh node's log, since it started.
wal_counters() {
    "$KVMESH" stats --addr "$SERVER_ADDR" --json | grep -o '"total":{.*}' >"$WORK/stats.json"
    local f
    for f in wal_records wal_writes wal_syncs wal_sync_us; do
        printf '%s ' "$(json_field "$WORK/stats.json" "$f")"
    done
}

# run LABEL PIPELINE: one SET-only run against the current server, its prefill first in a run of
# its own so that the log's counters can be read over the measured run (and its warm-up) alone;
# appends a row to $WORK/rows.
run() {
    local label=$1 pipeline=$2 out=$WORK/run.json per="-" syncus="-" before after
    local flags=(--target "$TARGET" --addr "$SERVER_ADDR" --label "$label" --cpus 1 --json
        --connections 50 --keys 100000 --value-size 100 --read-ratio 0 --pipeline "$pipeline")
    "$BENCH" "${flags[@]}" --prefill-only --timeout 10s >"$WORK/run.out" 2>"$WORK/run.err" ||
        { cat "$WORK/run.err" >&2; exit 1; }
    [ "$TARGET" = kvmesh ] && before=$(wal_counters)
    "$BENCH" "${flags[@]}" --no-prefill --server-pid "$SERVER_PID" --duration "$DURATION" \
        --warmup "$WARMUP" >"$WORK/run.out" 2>"$WORK/run.err" || { cat "$WORK/run.err" >&2; exit 1; }
    tail -n 1 "$WORK/run.out" >"$out"
    if [ "$TARGET" = kvmesh ]; then
        after=$(wal_counters)
        # shellcheck disable=SC2086 # four numbers each
        read -r per syncus <<<"$(echo $before $after | awk '{
            r = $5 - $1; w = $6 - $2; s = $7 - $3; u = $8 - $4
            if (s > 0) printf "%.1f/%.1f %.0f", r / s, w / s, u / s; else print "- -" }')"
    fi
    local row
    row=$(printf '%s %s %.0f %s %s %s %s %s %s' "$label" "$pipeline" \
        "$(json_field "$out" ops_per_sec)" "$(json_field "$out" p50_us)" \
        "$(json_field "$out" p99_us)" "$(json_field "$out" server_cpu_us_per_req)" \
        "$(json_field "$out" errors)" "$per" "$syncus")
    echo "$row" >>"$WORK/rows"
    local mark=""
    [ "$(json_field "$out" errors)" = 0 ] || mark=" ERRORS"
    log "$row load $(cut -d' ' -f1 /proc/loadavg)$mark"
}

# start_side BINARY "VAR=value ..." [node flags...]: a kvmesh node from BINARY with those
# variables in its environment, 1 shard on core 0, on a fresh data directory; sets SERVER_PID and
# SERVER_ADDR.
start_side() {
    local binary=$1 vars=$2 var
    shift 2
    for var in $vars; do export "${var?}"; done
    KVMESH=$binary start_kvmesh 1 0 --data-dir "$(mktemp -d "$WORK/kvmesh.XXXX")" --fsync "$FSYNC" "$@"
    for var in $vars; do unset "${var%%=*}"; done
}

bench_init durable-ab
ensure_redis
: >"$WORK/rows"
log "base: $BASE ${BASE_ENV:-} ${BASE_FLAGS:-}; new: $NEW ${NEW_ENV:-} ${NEW_FLAGS:-}; load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for pipeline in $PIPELINES; do
        if [ "$REDIS" = 1 ]; then
            TARGET=redis
            start_redis 0 --dir "$(mktemp -d "$WORK/redis.XXXX")" --appendonly yes --appendfsync always
            run redis-aof-always "$pipeline"
            stop_server "$SERVER_PID"
        fi
        TARGET=kvmesh
        # shellcheck disable=SC2086 # node flags, one word each
        start_side "$BASE" "${BASE_ENV:-}" ${BASE_FLAGS:-}
        run base "$pipeline"
        stop_server "$SERVER_PID"
        # shellcheck disable=SC2086 # node flags, one word each
        start_side "$NEW" "${NEW_ENV:-}" ${NEW_FLAGS:-}
        run new "$pipeline"
        stop_server "$SERVER_PID"
    done
done

echo "base: $BASE ${BASE_ENV:-} ${BASE_FLAGS:-}; new: $NEW ${NEW_ENV:-} ${NEW_FLAGS:-}; --fsync $FSYNC; $ROUNDS rounds of $DURATION; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| side | pipeline | ops/s median [range] | × redis | p50 us | p99 us | CPU us/req | errors (runs with any) | records/writes per sync | sync us |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
awk "$AWK_STATS"'
    function median_pair(list,    n, v, i, r, w, a, b) {
        n = split(list, v, " ")
        for (i = 1; i <= n; i++) { split(v[i], a, "/"); r = r " " a[1]; w = w " " a[2] }
        return sprintf("%.1f / %.1f", median(r), median(w))
    }
    {
        key = $1 " " $2
        if (!(key in seen)) { seen[key] = 1; order[++keys] = key }
        ops[key] = ops[key] " " $3; p50[key] = p50[key] " " $4; p99[key] = p99[key] " " $5
        cpu[key] = cpu[key] " " $6; err[key] += $7; erruns[key] += ($7 > 0); per[key] = per[key] " " $8; sus[key] = sus[key] " " $9
    }
    END {
        for (i = 1; i <= keys; i++) {
            key = order[i]; split(key, k, " ")
            base = "redis-aof-always " k[2]
            ratio = (base in ops) ? sprintf("%.2f×", median(ops[key]) / median(ops[base])) : "-"
            w = (per[key] ~ /-/) ? "-" : median_pair(per[key])
            u = (sus[key] ~ /-/) ? "-" : sprintf("%.0f", median(sus[key]))
            printf "| %s | %s | %.0f [%.0f–%.0f] | %s | %.0f | %.0f | %.2f | %d (%d) | %s | %s |\n", \
                k[1], k[2], median(ops[key]), lo(ops[key]), hi(ops[key]), ratio, \
                median(p50[key]), median(p99[key]), median(cpu[key]), err[key], erruns[key], w, u
        }
    }' "$WORK/rows"
