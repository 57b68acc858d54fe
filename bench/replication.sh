#!/usr/bin/env bash
# What replication costs: a 3-node local cluster driven by kvmesh-bench, SET only, 100-byte
# values, once with --replicas 1 (each key on one node) and once with --replicas 3 and
# --write-ack quorum (each key on all three; a write is acknowledged once two applied it).
# Also the write amplification: bytes written to the write-ahead logs of all three nodes
# (their wal_bytes counters, padding included) divided by the bytes the clients wrote (key +
# value of every SET the nodes accepted, prefill included).
#
#   bench/replication.sh                          # from anywhere; takes about 3 minutes
#   ROUNDS=5 DURATION=20s bench/replication.sh    # more and longer runs
#
# Placement: the three nodes (1 shard each, durable with --fsync never: the log is written but
# never synced, so the disk does not hide the replication work) pinned to core 0, the client
# pinned to core 1. So the nodes share one core, and with replicas 3 that core applies and logs
# every write three times: throughput shows replication's CPU cost, and CPU us/req is all three
# nodes' user+system time over the measured phase divided by the requests. Workload: 100,000
# keys (uniform, pre-filled), closed loop, 50 connections at pipeline 1 and at pipeline 16.
# Everything it starts is stopped when it exits, however it exits.
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
WORK=$(mktemp -d -t kvmesh-replication.XXXXXX)
PIDS=()

log() { echo "replication.sh: $*" >&2; }

stop_cluster() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    stop_cluster
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_cluster REPLICAS: three fresh nodes on free ports; sets PIDS and NODES (wire addresses).
start_cluster() {
    local replicas=$1 base peers i port
    base=$("$BENCH" free-port --count 9)
    NODES=()
    for i in 1 2 3; do NODES+=("127.0.0.1:$((base + (i - 1) * 3))"); done
    peers="1=${NODES[0]},2=${NODES[1]},3=${NODES[2]}"
    rm -rf "$WORK/data"
    for i in 1 2 3; do
        port=$((base + (i - 1) * 3))
        "$KVMESH" node --id "$i" --listen "127.0.0.1:$port" --grpc "127.0.0.1:$((port + 2))" \
            --shards 1 --cpus 0 --max-memory 1GiB --peers "$peers" --cluster bench \
            --replicas "$replicas" --write-ack quorum \
            --data-dir "$WORK/data/node-$i" --fsync never >"$WORK/node-$i.log" 2>&1 &
        PIDS+=($!)
    done
    for i in 1 2 3; do
        for _ in $(seq 300); do
            grep -q " ready: " "$WORK/node-$i.log" && break
            if ! kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null; then
                log "node $i exited before it was ready:"; cat "$WORK/node-$i.log" >&2; exit 1
            fi
            sleep 0.1
        done
        grep -q " ready: " "$WORK/node-$i.log" || { log "node $i was not ready after 30 s"; exit 1; }
    done
}

# run REPLICAS CONNECTIONS PIPELINE: one run on a fresh cluster; its JSON report, with the
# cluster's write amplification, appended to results.jsonl.
run() {
    local replicas=$1 conns=$2 pipeline=$3 i
    start_cluster "$replicas"
    if ! "$BENCH" --target kvmesh --addr "${NODES[0]}" --label "replicas $replicas" \
        --server-pid "${PIDS[0]}" --also-server-pid "${PIDS[1]},${PIDS[2]}" --cpus 1 \
        --connections "$conns" --pipeline "$pipeline" --keys 100000 --value-size 100 \
        --read-ratio 0 --duration "$DURATION" --warmup "$WARMUP" --json \
        >"$WORK/run.out" 2>"$WORK/run.err"; then
        log "kvmesh-bench failed:"; cat "$WORK/run.err" "$WORK/run.out" >&2; exit 1
    fi
    for i in 0 1 2; do
        "$KVMESH" stats --addr "${NODES[$i]}" --json >"$WORK/stats-$i.json"
    done
    python3 - "$WORK/run.out" "$WORK"/stats-*.json >>"$WORK/results.jsonl" <<'EOF'
import json, sys
report = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
totals = [json.load(open(p))["total"] for p in sys.argv[2:]]
# Client SETs are counted once, by the node that coordinated them (replica writes are not
# `puts`); keys are `key:` + 10 digits.
client_bytes = sum(t["puts"] for t in totals) * (14 + report["value_size"])
wal_bytes = sum(t["wal_bytes"] for t in totals)
report["write_amplification"] = wal_bytes / client_bytes if client_bytes else 0.0
report["replica_failed"] = sum(t["replica_writes_failed"] for t in totals)
print(json.dumps(report))
EOF
    log "replicas $replicas, ${conns}x$pipeline -> $(grep -E '^throughput:' "$WORK/run.out" | tr -s ' ')"
    stop_cluster
}

log "building kvmesh and kvmesh-bench (release)"
cargo build --release -q -p kvmesh -p kvmesh-bench
BENCH=target/release/kvmesh-bench
KVMESH=target/release/kvmesh
if [ "$(nproc)" -lt 2 ]; then
    log "needs at least 2 cores (nodes on core 0, client on core 1); this machine has $(nproc)"
    exit 1
fi

# replicas 1 and 3 alternate, in ROUNDS rounds, so a busy machine disturbs both alike; the
# table gives medians.
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for pipeline in 1 16; do
        run 1 50 "$pipeline"
        run 3 50 "$pipeline"
    done
done

echo "## kvmesh, replication, $(date -u +%Y-%m-%d)"
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r)."
echo "kvmesh: $(git describe --always --dirty 2>/dev/null || echo "no commit yet")."
echo "Command: \`bench/replication.sh\` (ROUNDS=$ROUNDS, DURATION=$DURATION, WARMUP=$WARMUP per run; medians of the rounds, ops/s range in brackets). 3 nodes of 1 shard, all on core 0, --fsync never, --write-ack quorum; client on core 1."
echo "100,000 keys, 100-byte values, SET only, closed loop. CPU us/req: the three nodes' user+system time per request. Write amplification: WAL bytes on all nodes / key+value bytes clients wrote."
echo
python3 - "$WORK/results.jsonl" <<'EOF'
import json, sys
from statistics import median
runs = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
groups = {}
for r in runs:
    groups.setdefault((r["label"], r["connections"], r["pipeline"]), []).append(r)
rows = {}
for key, rs in groups.items():
    row = {"errors": sum(r["errors"] for r in rs),
           "lo": min(r["ops_per_sec"] for r in rs), "hi": max(r["ops_per_sec"] for r in rs)}
    for k in ("ops_per_sec", "mean_us", "p50_us", "p99_us", "write_amplification"):
        row[k] = median(r[k] for r in rs)
    cpus = [r["server_cpu_us_per_req"] for r in rs if r.get("server_cpu_us_per_req")]
    row["cpu"] = median(cpus) if cpus else None
    rows[key] = row
print("| replicas | connections x pipeline | ops/s [range] | mean us | p50 us | p99 us | CPU us/req | write amplification | errors |")
print("| -------: | ---------------------: | ------------: | ------: | -----: | -----: | ---------: | ------------------: | -----: |")
for (label, conns, pipeline), r in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][0])):
    cpu = "n/a" if r["cpu"] is None else f"{r['cpu']:.2f}"
    print(f"| {label.split()[-1]} | {conns} x {pipeline} "
          f"| {r['ops_per_sec']:,.0f} [{r['lo']:,.0f}–{r['hi']:,.0f}] "
          f"| {r['mean_us']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {cpu} "
          f"| {r['write_amplification']:.2f} | {r['errors']} |")
print()
for conns, pipeline in sorted({(c, p) for (_, c, p) in rows}):
    one, three = rows.get(("replicas 1", conns, pipeline)), rows.get(("replicas 3", conns, pipeline))
    if one and three:
        print(f"- {conns} x {pipeline}: replicas 3 (quorum) runs at "
              f"{three['ops_per_sec'] / one['ops_per_sec']:.2f}x the throughput of replicas 1, "
              f"p99 {three['p99_us'] / one['p99_us']:.2f}x.")
EOF
