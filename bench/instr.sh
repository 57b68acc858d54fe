#!/usr/bin/env bash
# User-space instructions and allocations per request of a server, counted exactly by
# callgrind: deterministic, so it says what a change to the request path saves even on a busy
# machine (unlike wall-clock runs).
#
#   bench/instr.sh                       # kvmesh node and the raw probe, GET and SET, pipeline 1
#   REQUESTS=50000 PIPELINES="1 16" bench/instr.sh
#   KVMESH_BIN=/tmp/kvmesh-main bench/instr.sh kvmesh    # another build of the node
#   KEEP=/tmp/prof bench/instr.sh kvmesh  # keeps the callgrind files for callgrind_annotate
#   FSYNC=always bench/instr.sh kvmesh    # a durable node: --data-dir (fresh) --fsync always
#   CONNECTIONS=4 bench/instr.sh kvmesh   # fewer connections: more executor turns per request
#
# For each server (arguments: `kvmesh`, `probe`; default both) and workload, it starts a fresh
# server under `valgrind --tool=callgrind` on core 0 (kvmesh: 1 shard; no --data-dir unless
# FSYNC is set, then a fresh data directory per run with `--fsync FSYNC`), fills
# the keys with kvmesh-bench, zeroes the counters, runs exactly REQUESTS requests (CONNECTIONS
# connections, default 50, 10,000 keys, 100-byte values, client on core 1), dumps the counters
# and prints one line per run: instructions per request (all threads, kernel time not
# included) and calls to malloc per request. Needs valgrind (installs it if missing).
# Under valgrind a node serving 50 connections turns its executor about once per 47 requests
# (about 4 outside valgrind); with CONNECTIONS=4, about once per 4, so per-turn costs weigh
# as they do in a real run.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
REQUESTS=${REQUESTS:-20000}
PIPELINES=${PIPELINES:-1}
TARGETS=${*:-kvmesh probe}

bench_init instr
KVMESH=${KVMESH_BIN:-$KVMESH}
if ! command -v valgrind >/dev/null; then
    log "installing valgrind"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi

CALLGRIND_FLAGS=()

# counted SERVER READ_RATIO PIPELINE: one run; prints its line.
counted() {
    local server=$1 ratio=$2 pipeline=$3 durable=()
    [ -z "${FSYNC:-}" ] || durable=(--data-dir "$(mktemp -d "$WORK/data.XXXX")" --fsync "$FSYNC")
    callgrind_run "$server" "$ratio" "$pipeline" 10000 10s "${durable[@]}"
    # The dump of the measured requests (not the exit dump): instructions, calls to malloc.
    awk -v n="$REQUESTS" -v what="$server${FSYNC:+ --fsync $FSYNC} $([ "$ratio" = 1 ] && echo GET || echo SET) pipeline $pipeline${CONNECTIONS:+ (${CONNECTIONS} connections)}" '
        /^summary:/ { ir += $2 }
        /^cfn=(malloc|__libc_malloc)$/ { m = 1; next }
        m && /^calls=/ { split($1, c, "="); mallocs += c[2] }
        { m = 0 }
        END { printf "%-28s %8.0f instructions/request  %5.2f malloc/request\n", what, ir / n, mallocs / n }
    ' "$WORK"/callgrind.out.[0-9]*
}

for server in $TARGETS; do
    for pipeline in $PIPELINES; do
        counted "$server" 1 "$pipeline"
        counted "$server" 0 "$pipeline"
    done
done
