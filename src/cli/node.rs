//! `kvmesh node`: flags, with their defaults and units, turned into a [`NodeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::cluster::membership::{self, Membership};
use crate::cluster::replication::{ReadFrom, Replication, WriteAck};
use crate::node::durable::datadir::DataDir;
use crate::node::durable::Durability;
use crate::node::{self, NodeConfig};
use crate::units::{parse_duration, ByteSize};

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Wire address served by every shard. Shard i also listens on PORT+1+i.
    #[arg(long, default_value = "127.0.0.1:7000", value_name = "HOST:PORT")]
    listen: SocketAddr,
    /// Number of shards [default: one per --cpus entry, else one per usable core]. More shards
    /// than cores run unpinned.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Cores to pin shards to, in shard order, e.g. `0,1` [default: the online cores].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    cpus: Vec<usize>,
    /// Memory the node may use for keys, values and per-entry overhead, split evenly across
    /// shards. Past it, the least recently used keys are evicted.
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    max_memory: ByteSize,
    /// Node id carried by every version this node issues [default: with --data-dir, generated
    /// at first start and kept there (a given --id must then match it); without, random at
    /// each start].
    #[arg(long, value_name = "ID")]
    id: Option<u32>,
    /// Largest key accepted.
    #[arg(long, default_value = "64KiB", value_name = "SIZE")]
    max_key_size: ByteSize,
    /// Largest value accepted.
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    max_value_size: ByteSize,
    /// Largest wire frame accepted; must fit the largest key plus the largest value.
    #[arg(long, default_value = "17MiB", value_name = "SIZE")]
    max_frame: ByteSize,
    /// How long a shard waits for another shard, or another node, to answer a forwarded request
    /// (and, for another node, to accept a connection): the timeout of each hop.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    forward_timeout: Duration,
    /// gRPC address served by every shard: the DistributedCache and KvMesh APIs, health and
    /// reflection (health answers NOT_SERVING while the node recovers its log).
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
    grpc: SocketAddr,
    /// Largest gRPC message accepted or sent; must fit the largest key plus the largest value.
    #[arg(long, default_value = "17MiB", value_name = "SIZE")]
    grpc_max_message: ByteSize,
    /// Directory for the write-ahead log and the node's identity: turns durability on. It is
    /// locked while the node runs [default: none: a pure in-memory cache, nothing survives a
    /// restart].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// When the log is synced [default: always]. always: a write is acknowledged after an
    /// fdatasync that covers it (shared by concurrent writes); survives power loss. interval:
    /// synced at least every --fsync-interval; a power loss can lose that window. never:
    /// survives a crash of the process only. In every mode a write is acknowledged only after
    /// its log write completed. Needs --data-dir.
    #[arg(long, value_enum, value_name = "MODE")]
    fsync: Option<FsyncMode>,
    /// Longest time between syncs with --fsync interval [default: 10ms].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    fsync_interval: Option<Duration>,
    /// What start-up does with damage to log records that had been synced [default: strict].
    /// strict: stop, naming the file and offset. tolerate-corruption: skip the damaged records,
    /// report how many, and start. A torn tail left by a crash is truncated and reported in
    /// both. Needs --data-dir.
    #[arg(long, value_enum, value_name = "MODE")]
    recovery: Option<RecoveryMode>,
    /// Size of each log segment file, preallocated and zeroed before use; it must hold the
    /// largest record (key + value) [default: 64MiB]. Needs --data-dir.
    #[arg(long, value_name = "SIZE")]
    wal_segment_size: Option<ByteSize>,
    /// With --fsync always, how many fdatasync calls the log may have in flight at once, each
    /// covering what was written before it started [default: 2]. Needs --data-dir.
    #[arg(long, value_name = "N")]
    wal_syncs_in_flight: Option<usize>,
    /// A shard writes a snapshot of its live keys, and removes the log segments it covers,
    /// when its log on disk exceeds this many times the larger of its live data (bytes
    /// charged, see --max-memory) and one segment. A ratio; 0 turns automatic snapshots off
    /// (`kvmesh snapshot` still works) [default: 4]. Needs --data-dir.
    #[arg(long, value_name = "RATIO")]
    snapshot_factor: Option<f64>,
    /// How long a graceful stop (SIGINT, SIGTERM) may take: the node stops accepting, lets
    /// connections finish what they sent, syncs the log and exits 0; past this it exits 1.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    shutdown_timeout: Duration,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics (from shard 0) [default: off].
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<SocketAddr>,
    /// Client connections the node accepts at once (wire and gRPC), split evenly across the
    /// shards; one over its shard's share is refused with an error and closed [default: no
    /// limit].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Close client connections that send nothing for this long [default: never].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    idle_timeout: Option<Duration>,
    /// Read settings from this TOML file: each key is a flag's long name without the dashes
    /// (`max-memory = "2GiB"`); flags on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML (each flag from the command line, else the
    /// --config file, else its default) and exit without starting.
    #[arg(long)]
    print_config: bool,
    /// Every member of the cluster, this node included, as ID=HOST:PORT (their advertised wire
    /// addresses), comma-separated; every node gets the same list. A cluster of more than one
    /// needs --id and --data-dir. A list of this node alone, with --data-dir, starts a cluster
    /// of one that other nodes can --join [default: this node alone, which nothing can join].
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    peers: Option<String>,
    /// Join a running cluster through any of its members (HOST:PORT, its wire address): the
    /// node asks to be taken in, receives its share of the keys, then serves them. Needs --id
    /// and --data-dir. Once the node has joined, its data directory holds the agreed topology
    /// and this flag only helps it find the cluster [default: none].
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "peers")]
    join: Option<String>,
    /// The cluster's name: a node refuses peers that give another.
    #[arg(long, default_value = crate::cluster::membership::DEFAULT_CLUSTER, value_name = "NAME")]
    cluster: String,
    /// The wire address peers and clients reach this node at; must be this node's entry in
    /// --peers [default: --listen].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<SocketAddr>,
    /// Nodes that hold each key (its owners on the ring), clamped to the cluster size.
    #[arg(long, default_value_t = 3, value_name = "N")]
    replicas: usize,
    /// Owners that must have applied a write durably (each in its own --fsync mode) before it
    /// is acknowledged. one: the coordinator; quorum: a majority of the owners; all: every
    /// owner.
    #[arg(long, value_enum, default_value = "quorum", value_name = "MODE")]
    write_ack: WriteAck,
    /// Owners a read asks. one: this node when it owns the key, else the first owner believed
    /// up; quorum: a majority, the newest version wins and stale owners are repaired.
    #[arg(long, value_enum, default_value = "one", value_name = "MODE")]
    read_from: ReadFrom,
    /// How long a remove's tombstone is kept in a cluster, so a late, older write (a retry, a
    /// hint) cannot bring the key back; must exceed --hint-max-age.
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    tombstone_grace: Duration,
    /// Bytes of hints (writes an owner missed) the node keeps, split across shards; past it new
    /// hints are dropped, counted and logged.
    #[arg(long, default_value = "64MiB", value_name = "SIZE")]
    hint_max_bytes: ByteSize,
    /// Hints older than this are dropped, counted and logged.
    #[arg(long, default_value = "10min", value_parser = parse_duration, value_name = "DURATION")]
    hint_max_age: Duration,
    /// How often each shard checks that every peer answers: a peer is marked down at the first
    /// failed request or heartbeat, and up at the first that succeeds.
    #[arg(long, default_value = "500ms", value_parser = parse_duration, value_name = "DURATION")]
    heartbeat: Duration,
    /// MiB per second of keys and values the node streams to their new owners after a
    /// membership change (join or leave), split evenly across shards; 0: unlimited.
    #[arg(long, default_value_t = 64, value_name = "MIB_PER_SEC")]
    stream_rate: u64,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum FsyncMode {
    Always,
    Interval,
    Never,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum RecoveryMode {
    Strict,
    TolerateCorruption,
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    crate::logging::init();
    let advertise = args.advertise.unwrap_or(args.listen);
    let peers = match &args.peers {
        Some(text) => Some(membership::parse_peers(text).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    if peers.as_ref().is_some_and(|p| p.len() > 1) && args.id.is_none() {
        anyhow::bail!("--peers lists several members: give --id, which of them this node is");
    }
    let join = match &args.join {
        Some(text) => {
            if args.id.is_none() || args.data_dir.is_none() {
                anyhow::bail!("--join needs --id and --data-dir");
            }
            Some(
                std::net::ToSocketAddrs::to_socket_addrs(text.as_str())
                    .map_err(|e| anyhow::anyhow!("--join {text}: {e}"))?
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--join {text} resolves to nothing"))?,
            )
        }
        None => None,
    };
    let explicit_shards = args
        .shards
        .or((!args.cpus.is_empty()).then_some(args.cpus.len()));
    let alone = join.is_none() && peers.as_ref().is_none_or(|p| p.len() <= 1);
    if let Some(dir) = args.data_dir.as_ref().filter(|_| alone) {
        // A node that ran alone (a cluster of one) restarts alone; one that had company must
        // find it again.
        let stored = crate::cluster::raft_state::load(dir).map_err(|e| anyhow::anyhow!(e))?;
        let members = stored.map_or(0, |s| s.topology.all_members().len());
        if members > 1 {
            anyhow::bail!(
                "{} holds the topology of a cluster this node is a member of: start it with \
                 --join HOST:PORT (any member) or --peers, not alone",
                dir.display()
            );
        }
        // Without --peers it would start as a plain node and ignore its group: nothing
        // could join it any more.
        if members == 1 && peers.is_none() {
            anyhow::bail!(
                "{} holds the topology of a cluster of one: start it with --peers naming \
                 only itself (ID=HOST:PORT), as it was started",
                dir.display()
            );
        }
    }
    // Held until the node stops: the data directory stays locked as long as it runs.
    let data_dir = match &args.data_dir {
        Some(dir) => {
            let data = DataDir::open(dir, args.id, explicit_shards, random_id, || {
                node_default_shards().map_err(|e| e.to_string())
            })
            .map_err(|e| anyhow::anyhow!(e))?;
            if data.created {
                tracing::info!(
                    "new data directory {}: node id {}, {} shard(s), kept for later starts",
                    data.path().display(),
                    data.node_id,
                    data.shards
                );
            }
            if let Some(warning) = &data.warning {
                tracing::warn!("{warning}");
            }
            let mut data = data;
            if let Some(done) = &data.resumed {
                eprintln!("kvmesh: {done}");
            }
            if let Some(to) = data.reshard_to.take() {
                let report = crate::node::durable::reshard::run(
                    data.path(),
                    data.node_id,
                    data.shards,
                    to,
                    &wal_config(&args),
                )
                .map_err(|e| anyhow::anyhow!(e))?;
                eprintln!("kvmesh: {}", report.replace('\n', "\nkvmesh: "));
                data.shards = to;
            }
            Some(data)
        }
        None => {
            let durable_only = [
                (args.fsync.is_some(), "--fsync"),
                (args.fsync_interval.is_some(), "--fsync-interval"),
                (args.recovery.is_some(), "--recovery"),
                (args.wal_segment_size.is_some(), "--wal-segment-size"),
                (args.wal_syncs_in_flight.is_some(), "--wal-syncs-in-flight"),
                (args.snapshot_factor.is_some(), "--snapshot-factor"),
            ];
            if let Some((_, flag)) = durable_only.iter().find(|(given, _)| *given) {
                anyhow::bail!("{flag} needs --data-dir: without it the node keeps nothing on disk");
            }
            None
        }
    };
    let shards = match (&data_dir, explicit_shards) {
        (Some(data), _) => data.shards,
        (None, Some(n)) => n,
        (None, None) => node_default_shards()?,
    };
    let node_id = match &data_dir {
        Some(data) => data.node_id,
        None => args.id.unwrap_or_else(random_id),
    };
    let durability = data_dir.as_ref().map(|data| Durability {
        data_dir: data.path().to_path_buf(),
        wal: wal_config(&args),
        snapshot_factor: args
            .snapshot_factor
            .unwrap_or(crate::node::durable::DEFAULT_SNAPSHOT_FACTOR),
    });
    let cluster_of_one = peers.as_ref().is_some_and(|p| p.len() == 1);
    let members = peers.unwrap_or_else(|| vec![(node_id, advertise)]);
    let cluster = Membership::new(&args.cluster, node_id, advertise, members)
        .map_err(|e| anyhow::anyhow!(e))?;
    let to_usize = |b: ByteSize| usize::try_from(b.0).unwrap_or(usize::MAX);
    let config = NodeConfig {
        node_id,
        listen: args.listen,
        shards,
        cpus: args.cpus,
        max_memory: args.max_memory.0,
        max_key_len: to_usize(args.max_key_size),
        max_value_len: to_usize(args.max_value_size),
        max_frame: to_usize(args.max_frame),
        forward_timeout: args.forward_timeout,
        grpc: args.grpc,
        grpc_max_message: to_usize(args.grpc_max_message),
        durability,
        shutdown_timeout: args.shutdown_timeout,
        metrics: args.metrics,
        max_connections: args.max_connections,
        idle_timeout: args.idle_timeout,
        cluster,
        replication: Replication {
            replicas: args.replicas,
            write_ack: args.write_ack,
            read_from: args.read_from,
        },
        tombstone_grace: args.tombstone_grace,
        hint_max_bytes: args.hint_max_bytes.0,
        hint_max_age: args.hint_max_age,
        heartbeat: args.heartbeat,
        stream_rate: args.stream_rate.saturating_mul(1 << 20),
        join,
        cluster_of_one,
    };
    let result = node::run(config);
    drop(data_dir);
    result
}

fn wal_config(args: &NodeArgs) -> kvmesh_wal::Config {
    let defaults = kvmesh_wal::Config::default();
    kvmesh_wal::Config {
        fsync: match args.fsync {
            None | Some(FsyncMode::Always) => kvmesh_wal::Fsync::Always,
            Some(FsyncMode::Interval) => kvmesh_wal::Fsync::Interval,
            Some(FsyncMode::Never) => kvmesh_wal::Fsync::Never,
        },
        fsync_interval: args.fsync_interval.unwrap_or(defaults.fsync_interval),
        recovery: match args.recovery {
            None | Some(RecoveryMode::Strict) => kvmesh_wal::Recovery::Strict,
            Some(RecoveryMode::TolerateCorruption) => kvmesh_wal::Recovery::TolerateCorruption,
        },
        segment_size: args.wal_segment_size.map_or(defaults.segment_size, |s| s.0),
        syncs_in_flight: args.wal_syncs_in_flight.unwrap_or(defaults.syncs_in_flight),
        ..defaults
    }
}

fn node_default_shards() -> anyhow::Result<usize> {
    Ok(node::usable_cpus().map_err(|e| anyhow::anyhow!(e))?.len())
}

/// A non-zero id that differs between starts.
fn random_id() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    let seed = (std::process::id(), node::now_ms());
    (RandomState::new().hash_one(seed) as u32).max(1)
}
