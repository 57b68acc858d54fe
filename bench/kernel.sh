#!/usr/bin/env bash
# What the kernel does on a server's behalf per request: kvmesh beside the raw probes.
#
#   bench/kernel.sh                           # kvmesh and the epoll probe, GET, pipeline 1
#   bench/kernel.sh kvmesh probe uring        # and the io_uring probe
#   REQUESTS=300000 PIPELINE=16 bench/kernel.sh
#   KVMESH_ENV="GLOMMIO_NO_MULTISHOT_POLL=1" bench/kernel.sh kvmesh   # a switch, node only
#   KVMESH_BIN=/tmp/kvmesh-main bench/kernel.sh kvmesh                # another build of the node
#   PROFILE=1 bench/kernel.sh                 # also perf record -g (cpu-clock), top symbols
#
# For each server (arguments: `kvmesh`, `probe` (the epoll probe), `uring` (the io_uring probe);
# default `kvmesh probe`) it starts a fresh one on core 0 (kvmesh: 1 shard, no --data-dir, as
# compare.sh), fills 100k keys of 100 bytes, then runs
# exactly REQUESTS GETs (or SETs with READ_RATIO=0) of 50 connections at PIPELINE from
# kvmesh-bench on core 1, three times, each under one observer attached to the server's
# process (all its threads):
#   1. `perf stat` of every syscall, io_uring, timer, irq_vectors and sched tracepoint, with
#      /proc/PID/status context switches, the CPU time of every thread (/proc/PID/task/*/stat)
#      and core 0's interrupts (/proc/interrupts) around it;
#   2. `perf record` of io_uring_submit_req (by opcode) and hrtimer_start (by function);
#   3. (PROFILE=1) `perf record -g -e cpu-clock`, then the top symbols, kernel and user.
# It prints one Markdown table of events per request (rows nonzero for either server).
# Needs perf with tracepoints (perf_event_paranoid <= 1, or root).
set -euo pipefail

. "$(dirname "$0")/lib.sh"
REQUESTS=${REQUESTS:-200000}
PIPELINE=${PIPELINE:-1}
READ_RATIO=${READ_RATIO:-1}
TARGETS=${*:-kvmesh probe}

bench_init kernel
KVMESH=${KVMESH_BIN:-$KVMESH}
command -v perf >/dev/null || { log "needs perf"; exit 1; }

# load: the measured run against the current server.
load() {
    "$BENCH" --target kvmesh --addr "$SERVER_ADDR" --cpus 1 --connections 50 --keys 100000 \
        --value-size 100 --read-ratio "$READ_RATIO" --pipeline "$PIPELINE" --no-prefill \
        --warmup 0s --requests "$REQUESTS" >"$WORK/load.out" 2>&1 ||
        { log "kvmesh-bench failed:"; cat "$WORK/load.out" >&2; exit 1; }
}

# observe PID COMMAND...: COMMAND attached to PID in the background during one load run.
observe() {
    local pid=$1 observer
    shift
    "$@" -p "$pid" 2>"$WORK/observer.err" &
    observer=$!
    sleep 1 # perf needs a moment to attach to every thread
    load
    kill -INT "$observer"
    wait "$observer" || true
}

# thread_ticks PID: "tid name utime+stime" (clock ticks) of each of PID's threads.
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*/stat; do
        sed -E 's/^([0-9]+) \(([^)]*)\) (.*)$/\1 \2 \3/' "$t" | awk '{print $1, $2, $14 + $15}'
    done 2>/dev/null | LC_ALL=C sort
}

interrupts_cpu0() { awk 'NR > 1 {gsub(":", "", $1); print $1, $2}' /proc/interrupts; }

# measure NAME: the three observed runs against the current server ($SERVER_PID).
measure() {
    local name=$1 pid=$SERVER_PID dir=$WORK/$1
    mkdir -p "$dir"
    log "$name: prefill"
    "$BENCH" --target kvmesh --addr "$SERVER_ADDR" --cpus 1 --prefill-only --keys 100000 \
        --value-size 100 --connections 8 --pipeline 32 >/dev/null
    log "$name: perf stat, $REQUESTS requests at pipeline $PIPELINE"
    grep -E '^(voluntary|nonvoluntary)_ctxt' /proc/"$pid"/status >"$dir/ctxt.before"
    thread_ticks "$pid" >"$dir/ticks.before"
    interrupts_cpu0 >"$dir/irq.before"
    observe "$pid" perf stat -x, -o "$dir/stat.csv" -e 'syscalls:sys_enter_*' -e 'io_uring:*' \
        -e 'timer:*' -e 'irq_vectors:*' -e sched:sched_switch -e sched:sched_wakeup
    grep -E '^(voluntary|nonvoluntary)_ctxt' /proc/"$pid"/status >"$dir/ctxt.after"
    thread_ticks "$pid" >"$dir/ticks.after"
    interrupts_cpu0 >"$dir/irq.after"
    grep -E '^(throughput|latency)' "$WORK/load.out" | sed "s/^/$name: /" >&2 || true
    log "$name: perf record (io_uring ops, hrtimers)"
    observe "$pid" perf record -q -o "$dir/trace.data" -e io_uring:io_uring_submit_req \
        -e timer:hrtimer_start
    perf script -i "$dir/trace.data" 2>/dev/null | awk '
        /io_uring_submit_req/ { for (i = 1; i <= NF; i++) if ($i == "opcode") { o = $(i + 1); sub(",", "", o); n["io_uring op " o]++ } }
        /hrtimer_start/ { for (i = 1; i <= NF; i++) if ($i ~ /^function=/) { f = $i; sub("function=", "", f); n["hrtimer_start " f]++ } }
        END { for (k in n) printf "%s,%d\n", k, n[k] }' >"$dir/trace.csv"
    if [ -n "${PROFILE:-}" ]; then
        log "$name: perf record -g cpu-clock"
        observe "$pid" perf record -q -g -e cpu-clock -o "$dir/cpu.data"
        perf report -i "$dir/cpu.data" --no-children --sort sym --stdio 2>/dev/null |
            awk '/^ +[0-9.]+%/ && n++ < 40' >"$dir/profile.txt"
    fi
    # One "event,count" file: perf stat's counts, the trace breakdown, /proc deltas.
    {
        awk -F, '$1 ~ /^[0-9]+$/ && $1 > 0 { print $3 "," $1 }' "$dir/stat.csv"
        cat "$dir/trace.csv"
        paste "$dir/ctxt.before" "$dir/ctxt.after" | awk '{ print "/proc " $1 "," $4 - $2 }'
        LC_ALL=C join -a2 -e 0 -o 0,2.2,1.3,2.3 "$dir/ticks.before" "$dir/ticks.after" |
            awk -v us=$((1000000 / $(getconf CLK_TCK))) '{ print "CPU us of thread " $2 "," ($4 - $3) * us }'
        join "$dir/irq.before" "$dir/irq.after" | awk '$3 - $2 > 0 { print "core 0 interrupts " $1 "," $3 - $2 }'
    } >"$dir/events.csv"
}

for target in $TARGETS; do
    case $target in
        kvmesh)
            # shellcheck disable=SC2086 # VAR=value words, for the node only
            for v in ${KVMESH_ENV:-}; do export "${v?}"; done
            start_kvmesh 1 0
            for v in ${KVMESH_ENV:-}; do unset "${v%%=*}"; done
            ;;
        probe) start_probe 0 epoll ;;
        uring) start_probe 0 uring ;;
        *) log "unknown server $target (kvmesh, probe or uring)"; exit 2 ;;
    esac
    measure "$target"
    stop_server "$SERVER_PID"
done

echo "## Kernel events per request, $(date -u +%Y-%m-%d) ($(kvmesh_version))"
echo
machine_line
echo "Command: \`bench/kernel.sh $TARGETS\` (REQUESTS=$REQUESTS, PIPELINE=$PIPELINE, READ_RATIO=$READ_RATIO${KVMESH_ENV:+, KVMESH_ENV=$KVMESH_ENV}); load average $(cut -d' ' -f1-3 /proc/loadavg)."
echo
header="| per request |" rule="| --- |"
for target in $TARGETS; do header="$header $target |" rule="$rule ---: |"; done
echo "$header"
echo "$rule"
for target in $TARGETS; do cut -d, -f1 "$WORK/$target/events.csv"; done | sort -u | while read -r event; do
    row="| $event |"
    for target in $TARGETS; do
        count=$(awk -F, -v e="$event" '$1 == e { n += $2 } END { print n + 0 }' "$WORK/$target/events.csv")
        row="$row $(awk -v c="$count" -v r="$REQUESTS" 'BEGIN { printf "%.3f", c / r }') |"
    done
    echo "$row"
done
if [ -n "${PROFILE:-}" ]; then
    for target in $TARGETS; do
        echo
        echo "Top symbols of $target (perf record -g -e cpu-clock, --no-children --sort sym):"
        echo
        echo '```'
        cat "$WORK/$target/profile.txt"
        echo '```'
    done
fi
