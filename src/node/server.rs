//! One shard's life on its executor: bind its listeners, replay its log (with a data
//! directory), join the mesh, accept connections, reclaim expired keys in the background, and
//! stop when told to, syncing its log.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::Task;
use kvmesh_engine::Config as StoreConfig;
use kvmesh_proto::wire::Topology;

use super::config::NodeConfig;
use super::conn;
use super::durable;
use super::mesh::{self, Envelope, Mesh};
use super::shard::Shard;

/// How often the background step looks for expired keys, and how many it reclaims per step
/// before yielding to requests.
const EXPIRE_EVERY: Duration = Duration::from_millis(100);
const EXPIRE_BATCH: usize = 1024;
/// How often a shard checks whether the node was asked to stop.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What every task of one shard shares.
pub struct ShardCtx {
    pub me: usize,
    pub config: Arc<NodeConfig>,
    pub shard: Rc<RefCell<Shard>>,
    pub mesh: Rc<Mesh>,
    /// Connections to the other nodes of the cluster.
    pub peers: Rc<crate::cluster::Peers>,
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

/// Runs shard `me` until `stop` is set. Reports on `ready` once it serves, or why it cannot.
pub async fn run_shard(
    me: usize,
    config: Arc<NodeConfig>,
    mesh: MeshBuilder<Envelope, Full>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: Arc<AtomicBool>,
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
    // Replay this shard's log before joining the mesh: shards recover in parallel.
    let mut shard = Shard::new(
        me,
        config.node_id,
        store_config(&config),
        topology(&config, me),
    );
    if let Some(durability) = &config.durability {
        match durable::open_log(me, durability, &mut shard).await {
            Ok(report) => eprintln!("kvmesh: {}", report.replace('\n', "\nkvmesh: ")),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
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
    mesh::spawn_receivers(mesh.clone(), receivers, shard.clone());
    let ctx = Rc::new(ShardCtx {
        me,
        config,
        shard: shard.clone(),
        mesh,
        peers: peers.clone(),
    });

    // Dropping these tasks at the end closes the listeners and stops the expiry step.
    let _accepting: Vec<Task<()>> = listeners
        .into_iter()
        .map(|listener| glommio::spawn_local(accept_loop(listener, ctx.clone())))
        .collect();
    let _grpc = glommio::spawn_local(crate::grpc::accept_loop(grpc, ctx.clone()));
    let _expiring = glommio::spawn_local(expire_loop(shard));
    let _ = ready.send(Ok(()));
    // One shard introduces the node to its peers at start, so a misconfigured peer is reported
    // at once, not at the first request for its keys.
    let _probe = (me == 0).then(|| glommio::spawn_local(peers.probe()));

    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    // Whatever was written is synced before the shard goes, whatever the fsync mode.
    let log = ctx.shard.borrow().log().cloned();
    if let Some(log) = log {
        if let Err(e) = log.close().await {
            eprintln!("kvmesh: shard {me}: closing the write-ahead log: {e}");
        }
    }
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
    }
}

fn store_config(config: &NodeConfig) -> StoreConfig {
    StoreConfig {
        max_memory: config.shard_memory(),
        max_key_len: config.max_key_len,
        max_value_len: config.max_value_len,
        ..StoreConfig::default()
    }
}

async fn accept_loop(listener: TcpListener, ctx: Rc<ShardCtx>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(conn::serve(stream, ctx.clone())).detach();
            }
            Err(e) => {
                // Out of file descriptors or a transient network error: back off, keep serving
                // the connections we have.
                eprintln!("kvmesh: shard {}: accept failed: {e}", ctx.me);
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
