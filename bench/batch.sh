#!/usr/bin/env bash
# Batched gRPC throughput: the bytes API's MultiGet and MultiPut at --batch 100 (keys per call),
# through a node's own gRPC port and through `kvmesh gateway` in front of the same node, with the
# old API's unary calls (batch 1) through each for reference.
#
#   bench/batch.sh                         # from anywhere; takes about 2 minutes
#   DURATION=20s WARMUP=5s bench/batch.sh  # longer runs
#
# Placement (stated in the output): the node has 1 shard pinned to core 0; the client is pinned
# to core 1; the gateway (1 thread) is pinned to core 1 too, so through the gateway the client
# and the gateway share that core. Workload: 100,000 keys (uniform, all pre-filled), 100-byte
# values, closed loop; Get-only (MultiGet) and Set-only (MultiPut) runs. Everything it starts is
# stopped when it exits, however it exits.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
BATCH=${BATCH:-100}

# run LABEL ADDR PID BATCH READ_RATIO CONNECTIONS PIPELINE: one run, its JSON report appended to
# results.jsonl; PID is the process whose CPU time per key is reported (the node, or the gateway).
# The first run pre-fills the node's 100,000 keys; the others find them there.
PREFILL=
run() {
    local label=$1 addr=$2 pid=$3 batch=$4 ratio=$5 conns=$6 pipeline=$7
    # shellcheck disable=SC2086 # empty or one flag
    if ! "$BENCH" --target grpc --addr "$addr" --server-pid "$pid" --label "$label" $PREFILL \
        --timeout 5s --cpus 1 --connections "$conns" --pipeline "$pipeline" --batch "$batch" --keys 100000 \
        --value-size 100 --read-ratio "$ratio" --duration "$DURATION" --warmup "$WARMUP" --json \
        >"$WORK/run.out" 2>"$WORK/run.err"; then
        log "kvmesh-bench failed:"; cat "$WORK/run.err" "$WORK/run.out" >&2; exit 1
    fi
    tail -n 1 "$WORK/run.out" >>"$WORK/results.jsonl"
    PREFILL=--no-prefill
    log "$label batch $batch read-ratio $ratio ${conns}x$pipeline -> $(grep -E '^throughput:' "$WORK/run.out" | tr -s ' ')"
}

bench_init batch

start_kvmesh 1 0 --id 1
NODE_PID=$SERVER_PID
NODE_GRPC=$GRPC_ADDR
GATEWAY_GRPC=127.0.0.1:$("$BENCH" free-port)
taskset -c 1 "$KVMESH" gateway --grpc "$GATEWAY_GRPC" --peers "1=$SERVER_ADDR" --threads 1 \
    >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
track "$GATEWAY_PID"
wait_for_log "$GATEWAY_PID" "$WORK/gateway.log" "gateway ready"

for path in node gateway; do
    addr=$NODE_GRPC pid=$NODE_PID
    [ "$path" = gateway ] && addr=$GATEWAY_GRPC pid=$GATEWAY_PID
    run "$path" "$addr" "$pid" "$BATCH" 1 2 4
    run "$path" "$addr" "$pid" "$BATCH" 0 2 4
    run "$path" "$addr" "$pid" 1 1 2 25
    run "$path" "$addr" "$pid" 1 0 2 25
done

echo "## kvmesh gRPC batches, $(date -u +%Y-%m-%d)"
echo
machine_line
echo "kvmesh: $(kvmesh_version) (in-memory, no --data-dir)."
echo "Command: \`bench/batch.sh\` (DURATION=$DURATION, WARMUP=$WARMUP per run). 100,000 keys, 100-byte values, closed loop, 2 connections."
echo "Node: 1 shard on core 0. Client: core 1. Gateway (1 thread): core 1, sharing it with the client."
echo "keys/s counts every key of a batch. CPU us/key: user+system time over the measured phase per key,"
echo "of the node (path node) or of the gateway process (path gateway)."
echo
python3 - "$WORK/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print("| path | call | keys per call | calls in flight | keys/s | calls/s | p50 us | p99 us | CPU us/key | errors |")
print("| ---- | ---- | ------------: | --------------: | -----: | ------: | -----: | -----: | ---------: | -----: |")
for r in rows:
    batch = max(r.get("batch", 1), 1)
    reads = r["read_ratio"] == 1
    call = ("MultiGet" if reads else "MultiPut") if batch > 1 else ("Get" if reads else "Put")
    cpu = r.get("server_cpu_us_per_req")
    cpu = "n/a" if cpu is None else f"{cpu:.2f}"
    print(f"| {r['label']} | {call} | {batch} | {r['connections'] * r['pipeline']} "
          f"| {r['ops_per_sec']:,.0f} | {r['ops_per_sec'] / batch:,.0f} | {r['p50_us']:.0f} "
          f"| {r['p99_us']:.0f} | {cpu} | {r['errors']} |")
PY
