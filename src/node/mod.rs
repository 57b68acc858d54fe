//! A kvmesh node: one glommio executor per shard, each pinned to a core, sharing nothing but
//! messages.
//!
//! - [`config`]: validated settings and the pure decisions derived from them;
//! - [`router`]: where an op runs (pure);
//! - [`shard`]: one shard's state and handler (no I/O);
//! - [`reply`]: errors to wire statuses, in one place;
//! - [`dispatch`]: runs a batch of ops here or on their owners, for every front-end;
//! - [`replicate`]: a coordinator's replication of the writes it applied, and hinted handoff;
//! - [`quorum_read`]: reads that ask a majority of owners, and read repair;
//! - [`durable`]: each shard's write-ahead log, the data directory, recovery at start;
//! - [`grpc_backend`]: the gRPC front-end's backend in a node (runs ops through `dispatch`);
//! - [`mesh`], [`conn`], [`server`]: the glommio side: forwarding, connections, a shard's life;
//! - [`sys`]: start-up checks (memlock, ports, CPUs);
//! - [`shutdown`]: each shard's serving state, and the graceful stop on SIGINT or SIGTERM;
//! - [`limits`]: connection limits, idle connections, replies a client does not read;
//! - [`stream`]: the data plane of a membership change: streaming moved keys to their new
//!   owners (throttled, batched, retried), progress counters, and dropping what is no
//!   longer owned;
//! - [`raft`]: the topology Raft group's driver on shard 0 (clock, disk, network);
//! - [`change`]: a membership change's lifecycle: join, leave, stream, finish, drop.

mod change;
mod clock;
pub mod config;
mod conn;
pub(crate) mod dispatch;
pub mod durable;
mod fast;
mod fence;
mod fence_board;
mod grpc_backend;
mod hint_store;
mod hint_targets;
#[cfg(debug_assertions)]
mod hold_hook;
mod limits;
mod mesh;
mod prefetch;
mod quorum_read;
mod raft;
mod replicate;
mod reply;
pub mod router;
mod server;
mod shard;
pub mod shutdown;
mod starting;
// Without the test hook (a release build without `test-hooks`), nothing calls the engine
// until the control plane (issue 12, branch topo) does.
#[cfg_attr(not(any(debug_assertions, feature = "test-hooks")), allow(dead_code))]
pub mod stream;
mod sys;
mod topology_gate;

use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

pub use config::NodeConfig;
pub(crate) use replicate::annotate as annotate_replication;
pub(crate) use server::ShardCtx;
pub use sys::{check_ports_free, raise_memlock, usable_cpus};

/// Capacity of each shard-to-shard channel, in messages.
const MESH_CHANNEL: usize = 1024;
/// Entries of each of a shard's io_uring submission queues (glommio's default is 128).
///
/// glommio's throughput preemption timer completes after `ring_depth` completions, and each
/// time its `eventfd` write runs on an `iou-wrk` thread that preempts the shard on its core.
/// Every socket wake-up is a completion, so at 128 it fired about 1,300 times a second at
/// pipeline 1; at 1024 it fires eight times less often, for about 3% less CPU per request
/// (bench/PERFORMANCE.md, "Huge pages for the arena, and the throughput preemption timer
/// fired eight times less"). Time-based preemption is unchanged. The cost: about 100 KiB per
/// ring, three rings per shard (locked memory on kernels before 5.12).
const RING_DEPTH: usize = 1024;
/// How long the shards together may take to bind their ports and join the mesh.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// The slowest replay the start deadline allows for, on top of `START_DEADLINE`.
const RECOVERY_BYTES_PER_SEC: u64 = 20 << 20;

/// Wall-clock milliseconds since the UNIX epoch: the time base of TTL deadlines and versions.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the node and blocks until SIGINT or SIGTERM stops it.
pub fn run(config: NodeConfig) -> anyhow::Result<()> {
    config.validate().map_err(|e| anyhow!(e))?;
    sys::raise_memlock().map_err(|e| anyhow!(e))?;
    let mut ports = vec![(config.listen, "the node's wire port".to_string())];
    ports.extend((0..config.shards).map(|i| (config.shard_addr(i), format!("shard {i}'s port"))));
    ports.push((config.grpc, "the node's gRPC port (--grpc)".to_string()));
    ports.extend(
        config
            .metrics
            .map(|m| (m, "the metrics port (--metrics)".to_string())),
    );
    sys::check_ports_free(&ports).map_err(|e| anyhow!(e))?;

    let usable = sys::usable_cpus().map_err(|e| anyhow!(e))?;
    if let Some(cpu) = config.cpus.iter().find(|c| !usable.contains(c)) {
        bail!(
            "--cpus names core {cpu}, which this process may not use \
             (online cores in its affinity mask: {usable:?})"
        );
    }
    let placement = config::plan_placement(config.shards, &config.cpus, &usable);
    let pinned = placement.iter().all(Option::is_some);

    let stop = shutdown::Stop::new(config.shards, config.shutdown_timeout);
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 1, stop.requested.clone())
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(signal, stop.requested.clone())
            .context("cannot install signal handlers")?;
    }
    stop.spawn_watchdog()
        .context("cannot start the shutdown watchdog")?;

    let config = Arc::new(config);
    let mesh = MeshBuilder::full(config.shards, MESH_CHANNEL);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut executors = Vec::with_capacity(config.shards);
    let fence_board = fence_board::FenceBoard::new(config.shards);
    let mut metrics = config
        .metrics
        .map(|_| crate::metrics::wire(config.shards).into_iter());
    for (me, cpu) in placement.iter().enumerate() {
        let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
        let (config, mesh, ready, stop, board) = (
            config.clone(),
            mesh.clone(),
            ready_tx.clone(),
            stop.clone(),
            fence_board.clone(),
        );
        let metrics = metrics.as_mut().and_then(Iterator::next);
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("kvmesh-shard-{me}"))
            .ring_depth(RING_DEPTH)
            .spawn(move || server::run_shard(me, config, mesh, ready, stop, metrics, board))
            .map_err(|e| {
                anyhow!(
                    "cannot start shard {me}'s executor: {e}. kvmesh runs on glommio, which needs \
                     io_uring (Linux 5.8 or later, not disabled by kernel.io_uring_disabled or a \
                     seccomp profile) and permission to pin threads to cores"
                )
            })?;
        executors.push(handle);
    }
    drop(ready_tx);
    // Recovery reads every shard's whole log at start; allow for it.
    let log_bytes = config
        .durability
        .as_ref()
        .map_or(0, |d| durable::datadir::log_bytes(&d.data_dir));
    let start_deadline = START_DEADLINE + Duration::from_secs(log_bytes / RECOVERY_BYTES_PER_SEC);
    for _ in 0..config.shards {
        // A shard whose thread dies (say, it could not be pinned) never reports, and the others
        // wait for it in the mesh: so start-up has a deadline.
        match ready_rx.recv_timeout(start_deadline) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!(e),
            Err(_) => bail!(
                "not every shard started within {start_deadline:?}; a shard's thread may have \
                 failed to pin itself to its core (try --cpus, or more shards than cores to run \
                 unpinned)"
            ),
        }
    }
    let first_port = config.shard_addr(0).port();
    let last_port = config.shard_addr(config.shards - 1).port();
    tracing::info!(
        "node {} ready: wire {} (shard ports {first_port}-{last_port}), gRPC {}, \
         {} shard(s) {}, max memory {} ({} per shard)",
        config.node_id,
        config.listen,
        config.grpc,
        config.shards,
        if pinned {
            format!(
                "pinned to cores {:?}",
                placement.iter().flatten().collect::<Vec<_>>()
            )
        } else {
            "unpinned (more shards than cores)".to_string()
        },
        crate::units::ByteSize(config.max_memory),
        crate::units::ByteSize(config.shard_memory()),
    );
    match &config.durability {
        None => {
            tracing::info!("in-memory only (no --data-dir): nothing survives a restart of the node")
        }
        Some(d) => tracing::info!(
            "durable: write-ahead log in {}, --fsync {} ({})",
            d.data_dir.display(),
            durable::fsync_name(d.wal.fsync),
            durable::fsync_promise(&d.wal),
        ),
    }
    tracing::info!("{}", config.limits_summary());
    for handle in executors {
        handle
            .join()
            .map_err(|e| anyhow!("a shard's executor failed: {e}"))?;
    }
    tracing::info!(
        "node {} stopped{}",
        config.node_id,
        if config.durability.is_some() {
            "; write-ahead logs synced"
        } else {
            ""
        }
    );
    Ok(())
}
