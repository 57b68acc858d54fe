#!/usr/bin/env bash
# Simulated data-cache misses per request of a server: callgrind's cache simulator, the same
# requests for kvmesh and the raw probe, so it says where a request's misses are and how many,
# deterministically, on a busy machine and without hardware counters.
#
#   bench/misses.sh                          # kvmesh and the probe, GET and SET, pipeline 16
#   PIPELINES="1 16" KEYS=100000 bench/misses.sh kvmesh
#   KVMESH_BIN=/tmp/kvmesh-main bench/misses.sh kvmesh     # another build of the node
#   KEEP=/tmp/prof bench/misses.sh kvmesh    # keeps the callgrind files (callgrind_annotate
#                                            #   --show=Ir,D1mr,D1mw,DLmr,DLmw --sort=D1mr)
#   FSYNC=always bench/misses.sh kvmesh      # a durable node: --data-dir (fresh) --fsync always
#
# For each server (arguments: `kvmesh`, `probe`; default both) and workload it starts a fresh
# server under `valgrind --tool=callgrind --cache-sim=yes` on core 0 (kvmesh: 1 shard; no
# --data-dir unless FSYNC is set, then a fresh data directory per run with `--fsync FSYNC`),
# fills KEYS keys (default 100,000, as compare.sh), zeroes the counters, runs exactly REQUESTS
# requests (default 50,000; CONNECTIONS connections, default 50, uniform keys, 100-byte
# values, client on core 1), and prints per request: instructions, first-level data misses
# (reads and writes), and last-level misses. The simulated caches: D1 32 KiB 8-way, as this machine's,
# and as the "last level" its 1 MiB 8-way L2 (LL=size,assoc,line to change), not its 32 MiB
# L3, which 100,000 entries (about 15 MB) fit, so that would count almost nothing. A D1 miss
# costs roughly 14 cycles when L2 has the line, 50 or more when it does not. Needs valgrind.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
REQUESTS=${REQUESTS:-50000}
PIPELINES=${PIPELINES:-16}
KEYS=${KEYS:-100000}
LL=${LL:-1048576,8,64}
TARGETS=${*:-kvmesh probe}

bench_init misses
KVMESH=${KVMESH_BIN:-$KVMESH}
command -v valgrind >/dev/null || { log "needs valgrind (apt-get install valgrind)"; exit 1; }

CALLGRIND_FLAGS=(--cache-sim=yes --D1=32768,8,64 "--LL=$LL")

# counted SERVER READ_RATIO PIPELINE: one run; prints its line.
counted() {
    local server=$1 ratio=$2 pipeline=$3 durable=()
    [ -z "${FSYNC:-}" ] || durable=(--data-dir "$(mktemp -d "$WORK/data.XXXX")" --fsync "$FSYNC")
    callgrind_run "$server" "$ratio" "$pipeline" "$KEYS" 30s "${durable[@]}"
    # The dump of the measured requests: its `summary:` line is Ir Dr Dw I1mr D1mr D1mw ILmr
    # DLmr DLmw (the order of the `events:` line, checked here).
    awk -v n="$REQUESTS" -v what="$server${FSYNC:+ --fsync $FSYNC} $([ "$ratio" = 1 ] && echo GET || echo SET) pipeline $pipeline" '
        /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
        /^summary:/ { for (e in col) sum[e] += $(col[e]) }
        END {
            if (!("D1mr" in col)) { print "no cache events in the dump" > "/dev/stderr"; exit 1 }
            printf "%-22s %7.0f instr  D1 misses %5.2f (read %5.2f, write %5.2f)  LL misses %5.2f (read %5.2f, write %5.2f)  per request\n",
                what, sum["Ir"] / n, (sum["D1mr"] + sum["D1mw"]) / n, sum["D1mr"] / n, sum["D1mw"] / n,
                (sum["DLmr"] + sum["DLmw"]) / n, sum["DLmr"] / n, sum["DLmw"] / n
        }
    ' "$WORK"/callgrind.out.[0-9]*
}

for server in $TARGETS; do
    for pipeline in $PIPELINES; do
        counted "$server" 1 "$pipeline"
        counted "$server" 0 "$pipeline"
    done
done
