#!/usr/bin/env bash
# The cost of one hop between nodes: a 2-node cluster driven by kvmesh-bench, once with the
# cluster-aware client (every key straight to its owner's shard port: no hop) and once with
# every request sent to node 1's wire port (--via-addr), which serves its own keys and forwards
# the others (about half) to node 2 over its persistent peer connection.
#
#   bench/cluster.sh                          # from anywhere; takes about 6 minutes
#   ROUNDS=5 DURATION=20s bench/cluster.sh    # more and longer runs
#
# Placement: both nodes (1 shard each, durable with --fsync never: the log is written but never
# synced, so the disk does not hide the hop) pinned to core 0, the client pinned to core 1. So
# the nodes share one core: throughput shows what the hop costs in server CPU, and "CPU us/req"
# is both nodes' user+system time over the measured phase divided by the requests. Workload:
# 100,000 keys (uniform, pre-filled), 100-byte values, 90% GET, closed loop: 2 connections with
# one request in flight each (the hop's latency), then 50 connections at pipeline 1 and 16.
# Everything it starts is stopped when it exits, however it exits.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
NODES=()

# stop_cluster: stops both nodes.
stop_cluster() {
    local pid
    for pid in "${NODES[@]}"; do stop_server "$pid"; done
    NODES=()
}

# start_cluster: two fresh nodes on free ports; sets NODES, NODE1 and NODE2 (wire addresses).
start_cluster() {
    local base peers i port
    base=$("$BENCH" free-port --count 6)
    NODE1=127.0.0.1:$base
    NODE2=127.0.0.1:$((base + 3))
    peers="1=$NODE1,2=$NODE2"
    rm -rf "$WORK/data"
    for i in 1 2; do
        port=$((base + (i - 1) * 3))
        "$KVMESH" node --id "$i" --listen "127.0.0.1:$port" --grpc "127.0.0.1:$((port + 2))" \
            --shards 1 --cpus 0 --max-memory 2GiB --peers "$peers" --cluster bench \
            --data-dir "$WORK/data/node-$i" --fsync never >"$WORK/node-$i.log" 2>&1 &
        NODES+=($!)
        track "$!"
    done
    for i in 1 2; do
        wait_for_log "${NODES[$((i - 1))]}" "$WORK/node-$i.log" " ready: "
    done
}

# run ROUTE CONNECTIONS PIPELINE: one run on a fresh cluster; its JSON report, with node 1's counters
# (how many ops it forwarded), appended to results.jsonl.
run() {
    local route=$1 conns=$2 pipeline=$3 extra=()
    [ "$route" = "via node 1" ] && extra=(--via-addr)
    start_cluster
    if ! "$BENCH" --target kvmesh --addr "$NODE1" "${extra[@]}" --label "$route" \
        --server-pid "${NODES[0]}" --also-server-pid "${NODES[1]}" --cpus 1 --connections "$conns" \
        --pipeline "$pipeline" --keys 100000 --value-size 100 --read-ratio 0.9 \
        --duration "$DURATION" --warmup "$WARMUP" --json >"$WORK/run.out" 2>"$WORK/run.err"; then
        log "kvmesh-bench failed:"; cat "$WORK/run.err" "$WORK/run.out" >&2; exit 1
    fi
    "$KVMESH" stats --addr "$NODE1" --json >"$WORK/stats.json"
    python3 - "$WORK/run.out" "$WORK/stats.json" >>"$WORK/results.jsonl" <<'EOF'
import json, sys
report = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
total = json.load(open(sys.argv[2]))["total"]
# Of the ops that reached node 1 (prefill and warmup included), the share it forwarded.
arrived = total["node_forwarded_out"] + total["gets"] + total["puts"]
report["hopped"] = total["node_forwarded_out"] / arrived if arrived else 0.0
print(json.dumps(report))
EOF
    log "$route, ${conns}x$pipeline -> $(grep -E '^throughput:' "$WORK/run.out" | tr -s ' ')"
    stop_cluster
}

bench_init cluster

# Two connections with one request in flight each: the hop's latency, with little queueing.
# Then 50 connections at pipeline 1 and 16: its cost in throughput and server CPU. Direct and
# via node 1 alternate, in ROUNDS rounds, so a busy machine disturbs both alike; the tables
# give medians.
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for shape in "2 1" "50 1" "50 16"; do
        # shellcheck disable=SC2086 # two numbers on purpose
        set -- $shape
        run "direct" "$1" "$2"
        run "via node 1" "$1" "$2"
    done
done

echo "## kvmesh, one hop between nodes, $(date -u +%Y-%m-%d)"
echo
machine_line
echo "kvmesh: $(kvmesh_version)."
echo "Command: \`bench/cluster.sh\` (ROUNDS=$ROUNDS, DURATION=$DURATION, WARMUP=$WARMUP per run; medians of the rounds, ops/s range in brackets). 2 nodes of 1 shard, both on core 0, --fsync never; client on core 1."
echo "100,000 keys, 100-byte values, 90% GET, closed loop. CPU us/req: both nodes' user+system time per request."
echo
python3 - "$WORK/results.jsonl" <<'EOF'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
from statistics import median
groups = {}
for r in runs:
    groups.setdefault((r["label"], r["connections"], r["pipeline"]), []).append(r)
rows = []
for (label, conns, pipeline), rs in groups.items():
    row = {"label": label, "connections": conns, "pipeline": pipeline,
           "errors": sum(r["errors"] for r in rs),
           "lo": min(r["ops_per_sec"] for r in rs), "hi": max(r["ops_per_sec"] for r in rs)}
    for k in ("ops_per_sec", "mean_us", "p50_us", "p99_us", "hopped"):
        row[k] = median(r[k] for r in rs)
    cpus = [r["server_cpu_us_per_req"] for r in rs if r.get("server_cpu_us_per_req")]
    row["server_cpu_us_per_req"] = median(cpus) if cpus else None
    rows.append(row)
print("| route | connections x pipeline | ops/s [range] | mean us | p50 us | p99 us | CPU us/req | requests hopped | errors |")
print("| ----- | ---------------------: | ------------: | ------: | -----: | -----: | ---------: | --------------: | -----: |")
for r in rows:
    cpu = r.get("server_cpu_us_per_req")
    cpu = "n/a" if cpu is None else f"{cpu:.2f}"
    print(f"| {r['label']} | {r['connections']} x {r['pipeline']} "
          f"| {r['ops_per_sec']:,.0f} [{r['lo']:,.0f}–{r['hi']:,.0f}] "
          f"| {r['mean_us']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {cpu} "
          f"| {r['hopped']:.1%} | {r['errors']} |")
print()
# Means and CPU per request are averages over a mix in which a share `hopped` paid the hop, so
# the difference divided by that share is the cost of one hop.
by = {(r["label"], r["connections"], r["pipeline"]): r for r in rows}
for conns, pipeline in sorted({(r["connections"], r["pipeline"]) for r in rows}):
    direct, via = by.get(("direct", conns, pipeline)), by.get(("via node 1", conns, pipeline))
    if not direct or not via or not via["hopped"]:
        continue
    share = via["hopped"]
    cpu = "n/a"
    if direct.get("server_cpu_us_per_req") and via.get("server_cpu_us_per_req"):
        cpu = f"{(via['server_cpu_us_per_req'] - direct['server_cpu_us_per_req']) / share:.1f} us"
    latency = (via["mean_us"] - direct["mean_us"]) / share
    print(f"- {conns} x {pipeline}: one hop costs {cpu} of server CPU per forwarded request and "
          f"changes its mean latency by {latency:+.0f} us; throughput via node 1 is "
          f"{via['ops_per_sec'] / direct['ops_per_sec']:.2f}x direct ({share:.0%} hopped).")
EOF
