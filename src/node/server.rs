//! One shard's life on its executor: bind its listeners, serve gRPC health at once, replay its
//! log (with a data directory), join the mesh, accept connections, reclaim expired keys in the
//! background, and stop when told to, syncing its log.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::Task;
use kvmesh_engine::Config as StoreConfig;
use kvmesh_proto::wire::Topology;

use super::config::NodeConfig;
use super::conn;
use super::durable;
use super::grpc_backend::NodeBackend;
use super::mesh::{self, Envelope, Mesh};
use super::shard::Shard;
use super::shutdown::{Serving, Stop};
use super::starting::Deciding;
use crate::grpc::{self, Frontend};

/// How often the background step looks for expired keys, and how many it reclaims per step
/// before yielding to requests.
const EXPIRE_EVERY: Duration = Duration::from_millis(100);
const EXPIRE_BATCH: usize = 1024;

/// What every task of one shard shares.
pub struct ShardCtx {
    pub me: usize,
    pub config: Arc<NodeConfig>,
    pub shard: Rc<RefCell<Shard>>,
    pub mesh: Rc<Mesh>,
    /// Whether this shard serves, or drains for shutdown (see `shutdown`).
    pub serving: Serving,
    /// What requests read the time from (see `clock`).
    pub clock: super::clock::Clock,
    /// What its gRPC health check answers: serving once recovery is done, stopping from the
    /// moment a shutdown begins.
    pub health: grpc::Serving,
    /// This shard's snapshots, with a data directory.
    pub snapshots: Option<Rc<durable::Snapshots>>,
    /// Latencies and connection limits, for `/metrics` (see `crate::metrics`).
    pub metrics: RefCell<crate::metrics::ShardMetrics>,
    /// Connections to the other nodes of the cluster.
    pub peers: Rc<crate::cluster::Peers>,
    /// Writes this shard coordinated that an owner missed, until that owner is back.
    pub hints: Rc<RefCell<super::hint_store::HintStore>>,
    /// Shard 0 of a multi-node cluster: this node's member of the topology Raft group.
    pub raft: Option<Rc<super::raft::RaftDriver>>,
    /// Whether this shard refuses clients' data ops until it holds an agreed topology (see
    /// `topology_gate`).
    pub waits_for_topology: bool,
    /// While this shard's drop pass for a finished change runs: the epoch that change finished
    /// at, the newest this shard reports as drained meanwhile (see `change::annotate`).
    pub dropping_until: std::cell::Cell<Option<u64>>,
    /// The requests this shard planned, counted per topology epoch until they finished (see
    /// `fence`).
    pub fence: Rc<super::fence::Fence>,
    /// Where every shard of this node publishes what it applied and drained, for the others
    /// (see `fence_board`).
    pub fence_board: Arc<super::fence_board::FenceBoard>,
}

impl ShardCtx {
    /// Counts an open connection until the returned guard drops.
    pub fn connection_opened(self: &Rc<Self>) -> OpenConnection {
        {
            let mut shard = self.shard.borrow_mut();
            shard.counters.connections_accepted += 1;
            shard.counters.connections_open += 1;
        }
        OpenConnection(self.shard.clone())
    }
}

pub struct OpenConnection(Rc<RefCell<Shard>>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.borrow_mut().counters.connections_open -= 1;
    }
}

/// Runs shard `me` until a stop is requested, then drains it (see `shutdown`). Reports on
/// `ready` once it serves, or why it cannot.
pub async fn run_shard(
    me: usize,
    config: Arc<NodeConfig>,
    mesh: MeshBuilder<Envelope, Full>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: Stop,
    metrics: Option<crate::metrics::Wiring>,
    fence_board: Arc<super::fence_board::FenceBoard>,
) {
    let bind = |addr| {
        TcpListener::bind(addr).map_err(|e| format!("shard {me} cannot listen on {addr}: {e}"))
    };
    let (listeners, grpc) = match (
        bind(config.listen),
        bind(config.shard_addr(me)),
        bind(config.grpc),
    ) {
        (Ok(shared), Ok(own), Ok(grpc)) => ([shared, own], grpc),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // gRPC answers health (NOT_SERVING) and reflection during recovery, and every other call
    // UNAVAILABLE, so a load balancer can tell a recovering node from a dead one.
    let health = grpc::Serving::recovering();
    let front = Frontend::<NodeBackend>::new(
        format!("node {}'s shard {me}", config.node_id),
        config.grpc_max_message,
        health.clone(),
    );
    let grpc = glommio::spawn_local(grpc::accept_loop(grpc, front.clone()));
    // Replay this shard's log before joining the mesh: shards recover in parallel.
    let mut shard = Shard::new(
        me,
        config.node_id,
        store_config(&config),
        topology(&config, me),
    );
    let mut snapshots = None;
    if let Some(durability) = &config.durability {
        match durable::open_log(me, config.shards, durability, &mut shard).await {
            Ok((report, taker)) => {
                for line in report.lines() {
                    tracing::info!("{line}");
                }
                snapshots = Some(taker);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
        hold_recovery_for_tests().await;
    }
    // Shard 0 deciding whether it may bootstrap answers its peers' same question meanwhile
    // (see `starting`): its listeners accept from now on, and serve once the shard does.
    let mut listeners = Some(listeners);
    let mut accepting: Vec<Task<()>> = Vec::new();
    let mut deciding = None;
    match asks_before_bootstrap(me, &config) {
        Ok(true) => {
            let d = Rc::new(Deciding::new(topology(&config, me), config.max_frame));
            accepting = accept_all(me, listeners.take(), Accepting::Deciding(d.clone()));
            deciding = Some(d);
        }
        Ok(false) => {}
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    }
    // Looked at before the mesh is joined, so before shard 0 can bootstrap the group.
    let gate = super::topology_gate::Start {
        clustered: config.is_clustered(),
        durable: config.durability.is_some(),
        joining: config.join.is_some(),
        stored_topology: config.durability.as_ref().is_some_and(|d| {
            d.data_dir
                .join(crate::cluster::raft_state::FILE_NAME)
                .exists()
        }),
    };
    let (senders, receivers) = match mesh.join().await {
        Ok(joined) => joined,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "shard {me} could not join the channel mesh: {e}"
            )));
            return;
        }
    };
    let shard = Rc::new(RefCell::new(shard));
    let mesh = Mesh::new(senders, config.forward_timeout);
    let peers = crate::cluster::Peers::new(
        config.cluster.clone(),
        &topology(&config, me),
        config.forward_timeout,
    );
    let streamed = Rc::new(RefCell::new(super::change::Streamed::default()));
    let delivered = Rc::new(RefCell::new(super::change::Streamed::default()));
    let on_control: Rc<dyn Fn(mesh::Control)> = {
        let (peers, streamed, delivered) = (peers.clone(), streamed.clone(), delivered.clone());
        Rc::new(move |control| match control {
            mesh::Control::Topology(topology) => peers.apply_topology(&topology),
            mesh::Control::StreamDone { epoch, shard } => streamed.borrow_mut().note(epoch, shard),
            mesh::Control::HintsDelivered { epoch, shard } => {
                delivered.borrow_mut().note(epoch, shard)
            }
        })
    };
    mesh::spawn_receivers(mesh.clone(), receivers, shard.clone(), on_control);
    if let Err(e) = check_bootstrap(me, &config, deciding.is_some()).await {
        let _ = ready.send(Err(e));
        return;
    }
    let raft = match open_raft(me, &config, &peers, &mesh) {
        Ok(raft) => raft,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let hint_dir = config
        .durability
        .as_ref()
        .filter(|_| config.is_clustered())
        .map(|d| d.data_dir.join("hints"));
    let (hints, loaded) = super::hint_store::HintStore::open(
        hint_dir.as_deref(),
        me,
        config.hint_max_bytes / config.shards as u64,
        config.hint_max_age.as_millis() as u64,
    );
    if let Some(report) = loaded {
        tracing::info!("{report}");
    }
    let last_dropped = config
        .durability
        .as_ref()
        .filter(|_| config.is_clustered())
        .map(|d| super::durable::dropped::load(&d.data_dir, me));
    let ctx = Rc::new(ShardCtx {
        me,
        config,
        shard: shard.clone(),
        mesh,
        serving: Serving::new(),
        clock: Default::default(),
        health,
        snapshots: snapshots.clone(),
        metrics: RefCell::default(),
        peers: peers.clone(),
        hints: Rc::new(RefCell::new(hints)),
        raft: raft.clone(),
        waits_for_topology: super::topology_gate::waits_for_topology(gate),
        // Until the lifecycle looked whether a drop pass must run again (see
        // `change::resume_drop`), report at most the epoch of the last one completed.
        dropping_until: std::cell::Cell::new(last_dropped),
        fence: Rc::default(),
        fence_board,
    });
    let serving_metrics = match metrics.map(|wiring| crate::metrics::start(wiring, &ctx)) {
        Some(Err(e)) => {
            let _ = ready.send(Err(e));
            return;
        }
        Some(Ok(task)) => task,
        None => None,
    };

    // Dropping these tasks closes the listeners.
    if let Some(deciding) = deciding {
        deciding.serve_with(ctx.clone());
    }
    accepting.extend(accept_all(
        me,
        listeners.take(),
        Accepting::Serving(ctx.clone()),
    ));
    let snapshotting = snapshots.map(|s| glommio::spawn_local(s.run_automatic(shard.clone())));
    let _expiring = glommio::spawn_local(expire_loop(shard));
    front.attach(Rc::new(NodeBackend(ctx.clone())));
    let _raft = raft.map(|raft| glommio::spawn_local(raft.run(stop.requested.clone())));
    // A node started with --join that has no agreed topology yet asks the cluster to take it
    // in before it reports ready.
    if let (0, Some(seed), None) = (me, ctx.config.join, ctx.peers.agreed()) {
        if let Err(e) = super::change::join(&ctx.config, &ctx.peers, &ctx.mesh, seed).await {
            let _ = ready.send(Err(e));
            return;
        }
    }
    ctx.health.set_serving();
    let _ = ready.send(Ok(()));
    // One shard introduces the node to its peers at start, so a misconfigured peer is reported
    // at once, not at the first request for its keys.
    let _probe = (me == 0).then(|| glommio::spawn_local(peers.clone().probe()));
    let clustered = ctx.config.is_clustered();
    let _heartbeat = clustered.then(|| glommio::spawn_local(peers.heartbeat(ctx.config.heartbeat)));
    let _lifecycle = (clustered && ctx.config.durability.is_some()).then(|| {
        let stop = stop.requested.clone();
        glommio::spawn_local(super::change::lifecycle(
            ctx.clone(),
            streamed,
            delivered,
            stop,
        ))
    });
    let _publishing =
        clustered.then(|| glommio::spawn_local(super::change::publish_loop(ctx.clone())));
    let _handoff = clustered.then(|| {
        glommio::spawn_local(super::replicate::handoff(ctx.clone(), ctx.config.heartbeat))
    });
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    let _stream_test_hook = super::stream::hook::start(&ctx);
    #[cfg(debug_assertions)]
    if me == 0 {
        super::hold_hook::start();
    }

    stop.requested().await;
    let since = Instant::now();
    if me == 0 {
        stop.announce();
    }
    ctx.health.set_stopping();
    ctx.serving.drain();
    drop((accepting, grpc, serving_metrics, snapshotting));
    let left = stop
        .drain(since, || ctx.shard.borrow().counters.connections_open)
        .await;
    if left > 0 {
        tracing::warn!(
            "shard {me}: {left} connection(s) still busy after the drain budget; closing them"
        );
    }
    // Whatever was written is synced before the shard goes, whatever the fsync mode.
    let log = ctx.shard.borrow().log().cloned();
    if let Some(log) = log {
        if let Err(e) = log.close().await {
            tracing::error!("shard {me}: closing the write-ahead log: {e}");
        }
    }
}

/// Test hook: with `KVMESH_TEST_HOLD_RECOVERY_UNTIL=PATH` in its environment, a durable node
/// stays in recovery (health NOT_SERVING, other gRPC calls UNAVAILABLE) after replaying its log
/// until PATH exists (at most a minute), so an end-to-end test can observe recovery
/// deterministically however fast the replay is.
async fn hold_recovery_for_tests() {
    let Some(path) = std::env::var_os("KVMESH_TEST_HOLD_RECOVERY_UNTIL") else {
        return;
    };
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(&path).exists() && std::time::Instant::now() < give_up {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Shard 0 of a node that would bootstrap the topology group from `--peers` (no stored state,
/// no `--join`) first asks the peers whether the cluster exists already (see
/// `raft::bootstrap_guard`): `asks`, as [`asks_before_bootstrap`] decided.
async fn check_bootstrap(me: usize, config: &NodeConfig, asks: bool) -> Result<(), String> {
    if let (0, Some(durability), Some(_)) = (me, &config.durability, config.join) {
        return check_rejoin(config.node_id, &durability.data_dir);
    }
    if !asks {
        return Ok(());
    }
    let within = super::raft::bootstrap_guard::ask_within(config.forward_timeout);
    super::raft::bootstrap_guard::check(config.node_id, &config.cluster.members, within).await
}

/// Whether this shard asks its peers before it may bootstrap the topology group: shard 0 of
/// a durable node of a multi-node cluster, started with `--peers` and no stored state.
fn asks_before_bootstrap(me: usize, config: &NodeConfig) -> Result<bool, String> {
    let Some(durability) = config.durability.as_ref() else {
        return Ok(false);
    };
    if me != 0 || config.join.is_some() || !config.cluster.is_multi_node() {
        return Ok(false);
    }
    let stored =
        crate::cluster::raft_state::load(&durability.data_dir).map_err(|e| e.to_string())?;
    Ok(stored.is_none())
}

/// A node started with `--join` whose stored topology does not list it (its join was aborted,
/// or it left) would never join: the stored state is authoritative. It refuses to start.
fn check_rejoin(me: kvmesh_net::ring::NodeId, dir: &std::path::Path) -> Result<(), String> {
    let stored = crate::cluster::raft_state::load(dir).map_err(|e| e.to_string())?;
    let Some(t) = stored.map(|s| s.topology).filter(|t| t.epoch > 0) else {
        return Ok(());
    };
    if t.all_members().iter().any(|m| m.id == me) {
        return Ok(());
    }
    Err(format!(
        "{}: the stored topology (epoch {}) does not list node {me} (its join was aborted, or \
         it left): empty the data directory before joining again",
        dir.display(),
        t.epoch
    ))
}

/// Shard 0 of a multi-node cluster with a data directory opens the topology Raft group; it
/// tells this shard's peers and, over the mesh, every other shard each topology it applies.
fn open_raft(
    me: usize,
    config: &NodeConfig,
    peers: &Rc<crate::cluster::Peers>,
    mesh: &Rc<Mesh>,
) -> Result<Option<Rc<super::raft::RaftDriver>>, String> {
    let Some(durability) = config.durability.as_ref() else {
        return Ok(None);
    };
    if me != 0 || !config.is_clustered() {
        return Ok(None);
    }
    // A joining node starts with no members: it learns them from the log.
    let members: Vec<_> = match config.join {
        Some(_) => Vec::new(),
        None => config
            .cluster
            .members
            .iter()
            .map(|&(id, addr)| crate::cluster::topology::Member { id, addr })
            .collect(),
    };
    let (peers_, mesh) = (peers.clone(), mesh.clone());
    let publish = Box::new(move |topology: &kvmesh_proto::wire::ClusterTopology| {
        peers_.apply_topology(topology);
        mesh.broadcast_topology(topology);
    });
    super::raft::RaftDriver::open(
        config.node_id,
        durability.data_dir.clone(),
        &members,
        peers.clone(),
        publish,
    )
    .map(Some)
}

fn topology(config: &NodeConfig, me: usize) -> Topology {
    Topology {
        node_id: config.node_id,
        shards: config.shards as u32,
        shard: me as u32,
        shard_ports: config.shard_ports(),
        shard_hash: kvmesh_net::routing::SHARD_HASH_NAME.to_string(),
        cluster: config.cluster.cluster.clone(),
        members: config.cluster.wire_members(),
        epoch: 0,
        transition: None,
        raft_heard: Vec::new(),
        drained_epoch: 0,
    }
}

fn store_config(config: &NodeConfig) -> StoreConfig {
    StoreConfig {
        max_memory: config.shard_memory(),
        max_key_len: config.max_key_len,
        max_value_len: config.max_value_len,
        tombstone_grace_ms: config.tombstone_grace_ms(),
    }
}

/// Whom an accept loop hands its connections to.
#[derive(Clone)]
enum Accepting {
    Serving(Rc<ShardCtx>),
    /// Shard 0 deciding whether it may bootstrap, and serving from then on (see `starting`).
    Deciding(Rc<Deciding>),
}

/// Accept loops for `listeners` (none when they run already).
fn accept_all(me: usize, listeners: Option<[TcpListener; 2]>, to: Accepting) -> Vec<Task<()>> {
    listeners
        .into_iter()
        .flatten()
        .map(|listener| glommio::spawn_local(accept_loop(me, listener, to.clone())))
        .collect()
}

async fn accept_loop(me: usize, listener: TcpListener, to: Accepting) {
    loop {
        match listener.accept().await {
            Ok(stream) => match &to {
                Accepting::Serving(ctx) => {
                    glommio::spawn_local(conn::serve(stream, ctx.clone())).detach();
                }
                Accepting::Deciding(deciding) => {
                    let deciding = deciding.clone();
                    glommio::spawn_local(super::starting::serve(stream, deciding)).detach();
                }
            },
            Err(e) => {
                // Out of file descriptors or a transient network error: back off, keep serving
                // the connections we have.
                tracing::warn!("shard {me}: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn expire_loop(shard: Rc<RefCell<Shard>>) {
    loop {
        glommio::timer::sleep(EXPIRE_EVERY).await;
        // Reclaim in batches, yielding between them, so a mass expiry never stalls requests.
        while shard.borrow_mut().expire(super::now_ms(), EXPIRE_BATCH) == EXPIRE_BATCH {
            glommio::yield_if_needed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::raft_state::{save, Stored};
    use crate::cluster::topology::{Member, Topology};

    #[test]
    fn a_join_with_a_stored_topology_without_this_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_rejoin(4, dir.path()), Ok(()), "nothing stored");
        let members = (1..=3)
            .map(|id| Member {
                id,
                addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
            })
            .collect();
        let stored = Stored {
            hard_state: Default::default(),
            conf_state: Default::default(),
            entries: Vec::new(),
            topology: Topology::initial(members).unwrap(),
            applied: 0,
            snapshot: None,
        };
        save(dir.path(), &stored).unwrap();
        assert_eq!(check_rejoin(2, dir.path()), Ok(()), "a member");
        let refused = check_rejoin(4, dir.path()).unwrap_err();
        assert!(
            refused.contains("the stored topology (epoch 1) does not list node 4"),
            "{refused}"
        );
    }
}
