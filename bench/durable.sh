#!/usr/bin/env bash
# Durable writes: kvmesh's write-ahead log against Redis's AOF, measured in the same run by the
# same client (kvmesh-bench), on this machine's disk.
#
#   bench/durable.sh                          # from anywhere; takes about 5 minutes
#   ROUNDS=5 DURATION=10s bench/durable.sh    # more, longer runs
#   DATA=/mnt/ssd/tmp bench/durable.sh        # log to another disk (default: a temp dir)
#
# What it does:
#   - installs redis-server if it is missing (its Debian service is left alone: this script
#     runs private instances on free ports);
#   - builds kvmesh and kvmesh-bench in release;
#   - `kvmesh-bench fsync-probe` on the data disk: the latency of an aligned direct write into a
#     preallocated, zeroed file followed by fdatasync (what kvmesh's log does), and of a
#     buffered append followed by fdatasync (what Redis's AOF does), and the physical limit of
#     50 clients that each wait for their reply: 50 / that latency;
#   - servers pinned to core 0 (kvmesh: 1 shard), the client on core 1; SET-only, 50
#     connections, 100,000 keys, 100-byte values, pipeline 1 and 16, closed loop:
#       redis-server --appendonly yes --appendfsync always   (and everysec, for context)
#       kvmesh node --data-dir D --fsync always | interval (10ms) | never
#       kvmesh-bench probe-server --mode epoll: kvmesh's frames answered from a plain hash map,
#         with no log and no store, so the limit of the network path and this client for any
#         server, durable or not (at pipeline 1 it is below 2.5x Redis's rate on a 2-core VM)
#     each server on a fresh data directory, in ROUNDS rounds (default 3) that each run every
#     configuration back to back, so disk noise from other work hits them all alike;
#   - prints Markdown: the probe, then one table with the median over the rounds (and the
#     range) of throughput, p50, p99, server CPU per request, errors, and for kvmesh its log's
#     records per fdatasync and mean fdatasync latency as the log measures it.
# Everything it starts is stopped when it exits, however it exits.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}

# start_redis_aof FSYNC: a private Redis on core 0 with its AOF on, appendfsync FSYNC.
start_redis_aof() {
    local dir
    dir=$(mktemp -d "$WORK/redis-$1.XXXX")
    start_redis 0 --dir "$dir" --appendonly yes --appendfsync "$1"
}

# start_kvmesh_durable FSYNC: one shard on core 0, on a fresh data directory.
start_kvmesh_durable() {
    start_kvmesh 1 0 --data-dir "$(mktemp -d "$WORK/kvmesh-$1.XXXX")" --fsync "$1"
}

# A number field of a one-line JSON object: json_field FILE KEY.
json_field() {
    grep -o "\"$2\":[0-9.e+-]*" "$1" | head -n 1 | cut -d: -f2
}

# run_set LABEL PIPELINE: one SET-only run against the current server; appends a table row.
run_set() {
    local label=$1 pipeline=$2 out=$WORK/run.json wal="-" syncus="-"
    if ! "$BENCH" --target "$TARGET" --addr "$SERVER_ADDR" --server-pid "$SERVER_PID" \
        --label "$label" --cpus 1 --json --connections 50 --keys 100000 --value-size 100 \
        --read-ratio 0 --pipeline "$pipeline" --duration "$DURATION" --warmup "$WARMUP" \
        >"$WORK/run.out" 2>"$WORK/run.err"; then
        log "kvmesh-bench failed:"; cat "$WORK/run.err" "$WORK/run.out" >&2; exit 1
    fi
    tail -n 1 "$WORK/run.out" >"$out"
    tail -n 1 "$WORK/run.out" >>"$WORK/all.jsonl"
    if [ "${label#kvmesh-}" != "$label" ]; then
        # The log's own counters since the node started (prefill and warm-up included).
        "$KVMESH" stats --addr "$SERVER_ADDR" --json | grep -o '"total":{.*}' >"$WORK/stats.json"
        local records syncs sync_us
        records=$(json_field "$WORK/stats.json" wal_records)
        syncs=$(json_field "$WORK/stats.json" wal_syncs)
        sync_us=$(json_field "$WORK/stats.json" wal_sync_us)
        if [ "$syncs" -gt 0 ]; then
            wal=$(awk -v r="$records" -v s="$syncs" 'BEGIN { printf "%.0f", r / s }')
            syncus=$(awk -v t="$sync_us" -v s="$syncs" 'BEGIN { printf "%.0f", t / s }')
        fi
    fi
    local ops p50 p99 cpu errors
    ops=$(json_field "$out" ops_per_sec)
    p50=$(json_field "$out" p50_us)
    p99=$(json_field "$out" p99_us)
    cpu=$(json_field "$out" server_cpu_us_per_req)
    errors=$(json_field "$out" errors)
    printf '%s %s %s %s %s %s %s %s %s\n' "$label" "$pipeline" "$ops" "$p50" "$p99" \
        "${cpu:--}" "$errors" "$wal" "$syncus" >>"$WORK/rows"
    log "$label pipeline $pipeline -> $(printf '%.0f' "$ops") ops/s, p50 ${p50} us, p99 ${p99} us"
}

bench_init durable
ensure_redis

log "fsync probe in $WORK"
"$BENCH" fsync-probe --dir "$WORK" --concurrency 50 --json >"$WORK/probe.out"
: >"$WORK/rows"
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for pipeline in 1 16; do
        TARGET=redis
        start_redis_aof always
        run_set redis-aof-always "$pipeline"
        stop_server "$SERVER_PID"
        TARGET=kvmesh
        for fsync in always interval never; do
            start_kvmesh_durable "$fsync"
            run_set "kvmesh-fsync-$fsync" "$pipeline"
            stop_server "$SERVER_PID"
        done
        TARGET=redis
        start_redis_aof everysec
        run_set redis-aof-everysec "$pipeline"
        stop_server "$SERVER_PID"
        TARGET=kvmesh
        start_probe 0 epoll
        run_set probe-epoll-no-disk "$pipeline"
        stop_server "$SERVER_PID"
    done
done

echo "## Durable writes: kvmesh vs Redis, $(date -u +%Y-%m-%d)"
echo
echo "$(machine_line) Data on $(df --output=source,fstype "$WORK" | tail -n 1 | tr -s ' ')."
echo "Redis: $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-). kvmesh: $(kvmesh_version)."
echo "Command: \`bench/durable.sh\` (ROUNDS=$ROUNDS, DURATION=$DURATION, WARMUP=$WARMUP per run). Server on core 0 (kvmesh: 1 shard), client on core 1; SET only, 50 connections, 100,000 keys, 100-byte values, closed loop."
echo
echo "### The disk (\`kvmesh-bench fsync-probe\`, 4 KiB writes)"
echo
echo "| write, then fdatasync | p50 us | p99 us | mean us | fdatasync alone, mean us | limit at 50 clients (50 / mean) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
probe=$(tail -n 1 "$WORK/probe.out")
for mode in preallocated append; do
    part=$(echo "$probe" | grep -o "\"${mode}_us\":{[^}]*}")
    limit=$(echo "$probe" | grep -o "\"limit_${mode}\":[0-9.]*" | cut -d: -f2)
    name=$([ "$mode" = preallocated ] && echo "aligned O_DIRECT write into a preallocated, zeroed file (kvmesh)" || echo "buffered append (Redis AOF)")
    printf '| %s | %s | %s | %s | %s | %s |\n' "$name" \
        "$(echo "$part" | grep -o '"p50":[0-9.]*' | cut -d: -f2)" \
        "$(echo "$part" | grep -o '"p99":[0-9.]*' | cut -d: -f2)" \
        "$(echo "$part" | grep -o '"mean":[0-9.]*' | cut -d: -f2)" \
        "$(echo "$part" | grep -o '"sync_mean":[0-9.]*' | cut -d: -f2)" \
        "$(printf '%.0f' "$limit")"
done
echo
echo "### Throughput and latency (median of $ROUNDS rounds; range of ops/s in brackets)"
echo
echo "| system | pipeline | ops/s | × redis always | p50 us | p99 us | server CPU us/req | errors | records per fdatasync | mean fdatasync us |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
awk "$AWK_STATS"'
    {
        key = $1 " " $2
        if (!(key in seen)) { seen[key] = 1; order[++keys] = key }
        ops[key] = ops[key] " " $3; p50[key] = p50[key] " " $4; p99[key] = p99[key] " " $5
        cpu[key] = cpu[key] " " $6; err[key] += $7; wal[key] = wal[key] " " $8; sus[key] = sus[key] " " $9
    }
    END {
        for (i = 1; i <= keys; i++) {
            key = order[i]; split(key, k, " ")
            base = "redis-aof-always " k[2]
            ratio = (base in ops) ? sprintf("%.2f×", median(ops[key]) / median(ops[base])) : "-"
            c = (cpu[key] ~ /-/) ? "-" : sprintf("%.2f", median(cpu[key]))
            w = (wal[key] ~ /-/ || k[1] ~ /never/) ? "-" : sprintf("%.0f", median(wal[key]))
            u = (sus[key] ~ /-/ || k[1] ~ /never/) ? "-" : sprintf("%.0f", median(sus[key]))
            printf "| %s | %s | %.0f [%.0f–%.0f] | %s | %.0f | %.0f | %s | %d | %s | %s |\n", \
                k[1], k[2], median(ops[key]), lo(ops[key]), hi(ops[key]), ratio, \
                median(p50[key]), median(p99[key]), c, err[key], w, u
        }
        printf "\nThe 2.5× target against the network path'"'"'s limit (the probe, no disk), medians:"
        for (i = 1; i <= keys; i++) {
            split(order[i], k, " ")
            if (k[1] != "redis-aof-always" || !(("probe-epoll-no-disk " k[2]) in ops)) continue
            target = 2.5 * median(ops[order[i]]); limit = median(ops["probe-epoll-no-disk " k[2]])
            durable = median(ops["kvmesh-fsync-always " k[2]])
            printf " pipeline %s: 2.5× Redis is %.0f SET/s, the probe %.0f (%.2f× Redis), kvmesh --fsync always %.0f (%.0f%% of the probe).", \
                k[2], target, limit, 2.5 * limit / target, durable, 100 * durable / limit
        }
        printf "\n"
    }' "$WORK/rows"
