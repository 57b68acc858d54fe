#!/usr/bin/env bash
# The gRPC front-end measured: throughput and p50/p99 latency of `DistributedCache` unary calls
# at 50 concurrent streams, from kvmesh-bench --target grpc, with the wire protocol at the same
# concurrency for reference.
#
#   bench/grpc.sh                         # from anywhere; takes about 3 minutes
#   DURATION=20s WARMUP=5s bench/grpc.sh  # longer runs
#
# Placements (stated in the output):
#   - per core: a kvmesh node with 1 shard pinned to core 0, the client pinned to core 1;
#   - both cores: a node with 2 shards on cores 0 and 1, the client sharing both cores.
# Shapes of the 50 streams: 1 connection x 50 streams (one multiplexed channel), 2 x 25, and
# 50 x 1 (fifty clients with one call in flight each). Workload: 100,000 keys (uniform, all
# pre-filled), 100-byte values, 90% Get / 10% Put, closed loop. Everything it starts is stopped
# when it exits, however it exits.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}

# run PLACEMENT TARGET ADDR CLIENT_CPUS CONNECTIONS STREAMS: one run, its JSON report appended
# to results.jsonl with the placement as its label.
run() {
    local placement=$1 target=$2 addr=$3 cpus=$4 conns=$5 streams=$6
    if ! "$BENCH" --target "$target" --addr "$addr" --server-pid "$SERVER_PID" --label "$placement" \
        --cpus "$cpus" --connections "$conns" --pipeline "$streams" --keys 100000 \
        --value-size 100 --read-ratio 0.9 --duration "$DURATION" --warmup "$WARMUP" --json \
        >"$WORK/run.out" 2>"$WORK/run.err"; then
        log "kvmesh-bench failed:"; cat "$WORK/run.err" "$WORK/run.out" >&2; exit 1
    fi
    tail -n 1 "$WORK/run.out" >>"$WORK/results.jsonl"
    log "$placement $target ${conns}x$streams -> $(grep -E '^throughput:' "$WORK/run.out" | tr -s ' ')"
}

bench_init grpc

for placement in "per core" "both cores"; do
    if [ "$placement" = "per core" ]; then
        shards=1
        start_kvmesh 1 0
        client=1
    else
        shards=2
        start_kvmesh 2 0,1
        client=0,1
    fi
    for shape in "1 50" "2 25" "50 1"; do
        # shellcheck disable=SC2086 # two numbers on purpose
        set -- $shape
        run "$placement" grpc "$GRPC_ADDR" "$client" "$1" "$2"
        # The wire client binds each connection to one shard, so it needs one per shard.
        if [ "$1" -ge "$shards" ]; then
            run "$placement" kvmesh "$SERVER_ADDR" "$client" "$1" "$2"
        fi
    done
    stop_server "$SERVER_PID"
done

echo "## kvmesh gRPC, $(date -u +%Y-%m-%d)"
echo
machine_line
echo "kvmesh: $(kvmesh_version) (in-memory, no --data-dir)."
echo "Command: \`bench/grpc.sh\` (DURATION=$DURATION, WARMUP=$WARMUP per run). 100,000 keys, 100-byte values, 90% Get, closed loop, 50 calls in flight."
echo "Per core: node with 1 shard on core 0, client on core 1. Both cores: node with 2 shards on cores 0,1, client sharing both cores."
echo "CPU us/req: the node's user+system time over the measured phase divided by the requests."
echo
python3 - "$WORK/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print("| placement | protocol | connections x streams | ops/s | p50 us | p99 us | CPU us/req | errors |")
print("| --------- | -------- | --------------------- | ----: | -----: | -----: | ---------: | -----: |")
for r in rows:
    protocol = "gRPC" if r["target"] == "grpc" else "wire"
    cpu = r.get("server_cpu_us_per_req")
    cpu = "n/a" if cpu is None else f"{cpu:.2f}"
    print(f"| {r['label']} | {protocol} | {r['connections']} x {r['pipeline']} "
          f"| {r['ops_per_sec']:,.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {cpu} | {r['errors']} |")
EOF
