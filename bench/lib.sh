# Shared by the bench/*.sh scripts: a private work directory, servers that are always stopped,
# readiness waits, the release build and the machine line. Source it, then call bench_init.
#
#   . "$(dirname "$0")/lib.sh"
#   bench_init compare            # log prefix; sets WORK, BENCH, KVMESH; cds to the repo root
#
# Every server a script starts goes through start_kvmesh / start_redis (or `track PID`), so the
# EXIT trap stops it however the script ends.

SERVERS=()

log() { echo "$BENCH_NAME: $*" >&2; }

# bench_init NAME: log prefix NAME, a fresh $WORK (under $DATA if set), the EXIT/INT traps, a
# release build of kvmesh and kvmesh-bench, and a check for the two cores the placements need.
bench_init() {
    BENCH_NAME=$1
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    WORK=$(mktemp -d "${DATA:-${TMPDIR:-/tmp}}/kvmesh-$BENCH_NAME.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    if [ "$(nproc)" -lt 2 ]; then
        log "needs at least 2 cores (server on core 0, client on core 1); this machine has $(nproc)"
        exit 1
    fi
    log "building kvmesh and kvmesh-bench (release)"
    # KVMESH_FEATURES: extra features of the kvmesh build (stream.sh needs its test hook).
    cargo build --release -q -p kvmesh -p kvmesh-bench ${KVMESH_FEATURES:+--features "$KVMESH_FEATURES"}
    BENCH=target/release/kvmesh-bench
    KVMESH=target/release/kvmesh
}

bench_cleanup() {
    local pid
    for pid in "${SERVERS[@]}"; do
        stop_server "$pid"
    done
    SERVERS=()
    rm -rf "$WORK"
}

# track PID: stop PID when the script exits.
track() { SERVERS+=("$1"); }

# stop_server PID: SIGTERM, then SIGKILL if it is still there after 5 s.
stop_server() {
    local pid=$1 rest=() p
    for p in "${SERVERS[@]}"; do
        [ "$p" = "$pid" ] || rest+=("$p")
    done
    SERVERS=("${rest[@]}")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        case "$(ps -o stat= -p "$pid" 2>/dev/null)" in "" | Z*) break ;; esac
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# wait_for_log PID FILE PATTERN: until FILE contains PATTERN; fails if PID exits first or after
# 60 s (a durable node may be replaying its log).
wait_for_log() {
    local pid=$1 file=$2 pattern=$3
    for _ in $(seq 600); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            log "server $pid exited before it was ready:"; cat "$file" >&2; exit 1
        fi
        sleep 0.1
    done
    log "server $pid not ready after 60 s:"; cat "$file" >&2; exit 1
}

# ensure_redis: installs Debian's redis-server if missing. Its service on 6379 is left alone:
# the scripts run private instances on free ports.
ensure_redis() {
    command -v redis-server >/dev/null && return 0
    log "installing redis-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

# start_kvmesh SHARDS CPUS [node flags...]: a node on free ports with --max-memory 2GiB; sets
# SERVER_PID, SERVER_ADDR (wire), GRPC_ADDR and SERVER_LOG. Its ports are PORT (wire),
# PORT+1..PORT+SHARDS (shards) and PORT+SHARDS+1 (gRPC).
start_kvmesh() {
    local shards=$1 cpus=$2 port
    shift 2
    port=$("$BENCH" free-port --count $((shards + 2)))
    SERVER_LOG=$WORK/kvmesh-$port.log
    "$KVMESH" node --listen "127.0.0.1:$port" --shards "$shards" --cpus "$cpus" \
        --max-memory 2GiB --grpc "127.0.0.1:$((port + shards + 1))" "$@" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    track "$SERVER_PID"
    SERVER_ADDR=127.0.0.1:$port
    GRPC_ADDR=127.0.0.1:$((port + shards + 1))
    wait_for_log "$SERVER_PID" "$SERVER_LOG" " ready: "
}

# start_redis CORE [redis flags...]: a private redis-server on a free port, pinned to CORE; sets
# SERVER_PID, SERVER_ADDR and SERVER_LOG.
start_redis() {
    local core=$1 port
    shift
    port=$("$BENCH" free-port)
    SERVER_LOG=$WORK/redis-$port.log
    taskset -c "$core" redis-server --bind 127.0.0.1 --port "$port" --save '' \
        --daemonize no "$@" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    track "$SERVER_PID"
    SERVER_ADDR=127.0.0.1:$port
    wait_for_log "$SERVER_PID" "$SERVER_LOG" "Ready to accept connections"
}

# start_probe CORE MODE: `kvmesh-bench probe-server --mode MODE` (a raw probe: epoll or uring) on
# a free port, pinned to CORE; sets SERVER_PID, SERVER_ADDR and SERVER_LOG.
start_probe() {
    local core=$1 mode=$2 port
    port=$("$BENCH" free-port)
    SERVER_LOG=$WORK/probe-$mode-$port.log
    taskset -c "$core" "$BENCH" probe-server --listen "127.0.0.1:$port" --mode "$mode" \
        >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    track "$SERVER_PID"
    SERVER_ADDR=127.0.0.1:$port
    wait_for_log "$SERVER_PID" "$SERVER_LOG" "probe ready: "
}

# machine_line: one Markdown line naming the cores, the CPU model and the kernel.
machine_line() {
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r)."
}

# kvmesh_version: the commit the numbers come from.
kvmesh_version() {
    git describe --always --dirty 2>/dev/null || echo "no commit yet"
}

# awk functions over a space-separated list of numbers: median, lo (least), hi (greatest).
# Prepend to a program: awk "$AWK_STATS"'{ ... }'.
AWK_STATS='
    function median(list,    n, v, i, j, t) {
        n = split(list, v, " ")
        for (i = 2; i <= n; i++)
            for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function lo(list,    n, v, i, m) { n = split(list, v, " "); m = v[1]; for (i = 2; i <= n; i++) if (v[i] + 0 < m + 0) m = v[i]; return m }
    function hi(list,    n, v, i, m) { n = split(list, v, " "); m = v[1]; for (i = 2; i <= n; i++) if (v[i] + 0 > m + 0) m = v[i]; return m }
'

# callgrind_run SERVER READ_RATIO PIPELINE KEYS TIMEOUT [node flags...]: one counted run under
# callgrind, for instr.sh and misses.sh. Starts a fresh SERVER (`kvmesh`: 1 shard, KVMESH with
# the node flags; `probe`: the epoll probe) on core 0 under `valgrind --tool=callgrind` with
# CALLGRIND_FLAGS added, fills KEYS keys of 100 bytes, zeroes the counters, runs exactly
# REQUESTS requests of CONNECTIONS connections (default 50) at PIPELINE from core 1, dumps the
# counters and stops the server. The measured dump is left in "$WORK"/callgrind.out.[0-9]*
# (and copied to KEEP/callgrind.SERVER-RATIO-PIPELINE when KEEP is set).
callgrind_run() {
    local server=$1 ratio=$2 pipeline=$3 keys=$4 timeout=$5 port
    local out=$WORK/callgrind.out log=$WORK/server.log
    shift 5
    port=$("$BENCH" free-port --count 3)
    # Both reused by every run: the last server's " ready: " must not be read as this one's.
    rm -f "$out"* "$log"
    local cmd=(valgrind --tool=callgrind "${CALLGRIND_FLAGS[@]}" --callgrind-out-file="$out"
        --compress-strings=no --compress-pos=no)
    case $server in
        kvmesh) taskset -c 0 "${cmd[@]}" "$KVMESH" node --listen "127.0.0.1:$port" --shards 1 \
            --cpus 0 --grpc "127.0.0.1:$((port + 2))" "$@" >"$log" 2>&1 &
            ;;
        probe) taskset -c 0 "${cmd[@]}" "$BENCH" probe-server --listen "127.0.0.1:$port" \
            --mode epoll >"$log" 2>&1 &
            ;;
        *) log "unknown server $server (kvmesh or probe)"; exit 2 ;;
    esac
    local pid=$!
    track "$pid"
    case $server in
        kvmesh) wait_for_log "$pid" "$log" " ready: " ;;
        probe) wait_for_log "$pid" "$log" "probe ready: " ;;
    esac
    local flags=(--target kvmesh --addr "127.0.0.1:$port" --cpus 1
        --connections "${CONNECTIONS:-50}" --keys "$keys" --value-size 100
        --pipeline "$pipeline" --timeout "$timeout" --warmup 0)
    "$BENCH" "${flags[@]}" --prefill-only >/dev/null 2>&1
    callgrind_control -z "$pid" >/dev/null 2>&1
    "$BENCH" "${flags[@]}" --no-prefill --read-ratio "$ratio" --requests "$REQUESTS" --json \
        >"$WORK/run.out" 2>"$WORK/run.err" || { cat "$WORK/run.err" >&2; exit 1; }
    callgrind_control -d "$pid" >/dev/null 2>&1
    stop_server "$pid"
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP"
        cat "$out".[0-9]* >"$KEEP/callgrind.$server-$ratio-$pipeline"
    fi
}
