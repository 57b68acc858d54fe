//! A node's validated configuration, and the pure decisions derived from it (ports, placement).

use std::net::SocketAddr;
use std::time::Duration;

use super::durable::Durability;

/// Everything a node needs to start. Built from the command line by `cli::node`; every field
/// has been validated by [`NodeConfig::validate`] before a node starts.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id, carried by every version it issues.
    pub node_id: u32,
    /// The wire port served by every shard. Shard `i` also serves `port + 1 + i`.
    pub listen: SocketAddr,
    /// Number of shards (glommio executors).
    pub shards: usize,
    /// Cores to pin shards to, in shard order. Empty: every online core.
    pub cpus: Vec<usize>,
    /// Bytes the whole node may hold, split evenly across shards.
    pub max_memory: u64,
    /// Largest key accepted, in bytes.
    pub max_key_len: usize,
    /// Largest value accepted, in bytes.
    pub max_value_len: usize,
    /// Largest wire frame accepted, in bytes (the length prefix is checked before allocating).
    pub max_frame: usize,
    /// How long a shard waits for another shard, or another node, to answer a forwarded request
    /// (and, for another node, to accept a connection): the timeout of each hop.
    pub forward_timeout: Duration,
    /// The gRPC address served by every shard (SO_REUSEPORT spreads connections).
    pub grpc: SocketAddr,
    /// Largest gRPC message accepted or sent, in bytes; must fit the largest key plus the
    /// largest value.
    pub grpc_max_message: usize,
    /// The write-ahead log, with `--data-dir`; `None`: a pure in-memory cache.
    pub durability: Option<Durability>,
    /// How long a graceful stop (SIGINT, SIGTERM) may take before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Where `/metrics` is served (Prometheus text format), by shard 0; `None`: nowhere.
    pub metrics: Option<SocketAddr>,
    /// Client connections the node accepts at once, split evenly across shards (see
    /// [`NodeConfig::shard_max_connections`]); `None`: no limit.
    pub max_connections: Option<usize>,
    /// Client connections idle longer than this are closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// The cluster this node belongs to: its name, this node's id and advertised address, and
    /// every member (`--cluster`, `--peers`, `--advertise`). A node alone is a 1-member cluster.
    pub cluster: crate::cluster::Membership,
    /// Owners per key and how many must acknowledge a write (`--replicas`, `--write-ack`,
    /// `--read-from`).
    pub replication: crate::cluster::replication::Replication,
    /// How long a remove's tombstone is kept in a cluster (`--tombstone-grace`, default 1 h):
    /// while it lives, an older write arriving late (a retry, a hint) cannot bring the key back.
    pub tombstone_grace: Duration,
    /// Bytes of hints the node keeps for owners that missed writes, split across shards
    /// (`--hint-max-bytes`, default 64 MiB).
    pub hint_max_bytes: u64,
    /// Age past which a hint is dropped (`--hint-max-age`, default 10 min); must be below
    /// the tombstone grace.
    pub hint_max_age: Duration,
    /// How often each shard checks on every peer (`--heartbeat`, default 500 ms).
    pub heartbeat: Duration,
    /// Bytes per second (keys and values) the node streams to new owners after a membership
    /// change, split evenly across shards (`--stream-rate`, MiB/s, default 64); 0: unlimited.
    pub stream_rate: u64,
    /// `--join`: a member of the running cluster this node asks to join; only used while
    /// no agreed topology is stored in the data directory.
    pub join: Option<SocketAddr>,
    /// `--peers` names only this node: with `--data-dir`, a cluster of one, which runs the
    /// topology group alone so that others can `--join` it. A node started without `--peers`
    /// stays a plain single node (no group).
    pub cluster_of_one: bool,
}

impl NodeConfig {
    /// Whether this node runs the agreed topology: it is, or is joining, a cluster of more
    /// than one, or it is a cluster of one that others can join ([`NodeConfig::cluster_of_one`]:
    /// its topology group has one voter).
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_multi_node()
            || self.join.is_some()
            || (self.cluster_of_one && self.durability.is_some())
    }

    /// This shard's share of `--stream-rate`, bytes per second; 0: unlimited.
    pub fn shard_stream_rate(&self) -> u64 {
        self.stream_rate / self.shards.max(1) as u64
    }

    /// The tombstone grace the stores use: `--tombstone-grace`, also on a node started alone,
    /// because a node can grow: when one joins, a remove that reaches it before the stream's
    /// copy of the key must keep that older copy out.
    pub fn tombstone_grace_ms(&self) -> u64 {
        self.tombstone_grace.as_millis() as u64
    }

    /// Checks the values against each other, with one clear message per problem.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.shards == 0 {
            problems.push("--shards must be at least 1".to_string());
        }
        if self.listen.port() == 0 {
            problems.push(
                "--listen needs an explicit port: shard i serves PORT+1+i, so port 0 cannot work"
                    .to_string(),
            );
        } else if usize::from(self.listen.port()) + self.shards > usize::from(u16::MAX) {
            problems.push(format!(
                "--listen port {} leaves no room for {} shard ports above it (max 65535)",
                self.listen.port(),
                self.shards
            ));
        }
        let per_shard = self.max_memory / self.shards.max(1) as u64;
        let smallest_entry = kvmesh_engine::Store::entry_charge(1, 0);
        if per_shard < smallest_entry {
            problems.push(format!(
                "--max-memory {} gives each of {} shards {} bytes, less than one entry",
                self.max_memory, self.shards, per_shard
            ));
        }
        let largest_request = self.max_key_len + self.max_value_len + 64;
        if self.max_frame < largest_request {
            problems.push(format!(
                "--max-frame {} is smaller than the largest legal request ({} bytes: key {} + value {} + overhead)",
                self.max_frame, largest_request, self.max_key_len, self.max_value_len
            ));
        }
        if self.grpc.port() == 0 {
            problems.push(
                "--grpc needs an explicit port: every shard binds the same one, so port 0 cannot work"
                    .to_string(),
            );
        } else if (self.grpc.ip() == self.listen.ip()
            || self.grpc.ip().is_unspecified()
            || self.listen.ip().is_unspecified())
            && (self.listen.port()..=self.listen.port().saturating_add(self.shards as u16))
                .contains(&self.grpc.port())
        {
            problems.push(format!(
                "--grpc port {} collides with the wire ports {}..={} (--listen and the shard ports)",
                self.grpc.port(),
                self.listen.port(),
                usize::from(self.listen.port()) + self.shards
            ));
        }
        if self.grpc_max_message < largest_request {
            problems.push(format!(
                "--grpc-max-message {} is smaller than the largest legal request ({} bytes: key {} + value {} + overhead)",
                self.grpc_max_message, largest_request, self.max_key_len, self.max_value_len
            ));
        }
        if !self.cpus.is_empty() && self.cpus.len() < self.shards {
            problems.push(format!(
                "--cpus lists {} cores for {} shards: list one core per shard, or leave it out",
                self.cpus.len(),
                self.shards
            ));
        }
        if let Some(durability) = &self.durability {
            if let Err(e) = durability.wal.validate() {
                problems.push(e);
            }
            let factor = durability.snapshot_factor;
            if !(factor == 0.0 || (2.0..=1e6).contains(&factor)) {
                problems.push(format!(
                    "--snapshot-factor {factor} must be 0 (off) or between 2 and 1000000: below \
                     2, a snapshot could not free a segment beside the active one and the spare"
                ));
            }
            // A put's record: key, value, version, deadline, seq, framing.
            let largest_record = self.max_key_len + self.max_value_len + 64;
            if durability.wal.max_payload() < largest_record {
                problems.push(format!(
                    "--wal-segment-size {} cannot hold the largest record ({largest_record} bytes: \
                     key {} + value {} + overhead); raise it or lower --max-value-size",
                    durability.wal.segment_size, self.max_key_len, self.max_value_len
                ));
            }
        }
        if self.shutdown_timeout.is_zero() {
            problems.push("--shutdown-timeout must be more than 0".to_string());
        }
        if let Some(max) = self.max_connections {
            if max < self.shards {
                problems.push(format!(
                    "--max-connections {max} is less than one connection for each of {} shards",
                    self.shards
                ));
            }
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            problems.push(
                "--idle-timeout must be more than 0 (leave it out to never close idle connections)"
                    .to_string(),
            );
        }
        if let Some(metrics) = self.metrics {
            if metrics.port() == 0 {
                problems.push("--metrics needs an explicit port".to_string());
            } else if metrics == self.grpc
                || ((metrics.ip() == self.listen.ip() || metrics.ip().is_unspecified())
                    && (self.listen.port()..=self.listen.port().saturating_add(self.shards as u16))
                        .contains(&metrics.port()))
            {
                problems.push(format!(
                    "--metrics {metrics} collides with the wire ports or the gRPC port"
                ));
            }
        }
        if self.cluster.is_multi_node() && self.durability.is_none() {
            problems.push(format!(
                "a node in a cluster of more than one (--peers lists {} members) needs --data-dir: \
                 an in-memory node that restarted empty would answer \"not found\" for keys it \
                 had acknowledged. Pure in-memory mode is for single nodes",
                self.cluster.members.len()
            ));
        }
        if self.replication.replicas == 0 {
            problems.push("--replicas must be at least 1".to_string());
        }
        if self.heartbeat.is_zero() {
            problems.push("--heartbeat must be more than 0".to_string());
        }
        if self.is_clustered() && self.hint_max_age >= self.tombstone_grace {
            problems.push(format!(
                "--hint-max-age ({:?}) must be below --tombstone-grace ({:?}): a hint older than \
                 a remove's tombstone could bring the removed key back",
                self.hint_max_age, self.tombstone_grace
            ));
        }
        if self.cluster.me != self.node_id {
            problems.push(format!(
                "this node's id is {}, but the cluster configuration says {}",
                self.node_id, self.cluster.me
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The wire address of shard `shard`'s own port.
    pub fn shard_addr(&self, shard: usize) -> SocketAddr {
        let mut addr = self.listen;
        addr.set_port(self.listen.port() + 1 + shard as u16);
        addr
    }

    pub fn shard_ports(&self) -> Vec<u32> {
        (0..self.shards)
            .map(|i| u32::from(self.shard_addr(i).port()))
            .collect()
    }

    /// Each shard's share of `--max-connections` (rounded down, at least 1); `None`: no limit.
    /// Shards count their own connections only, so no counter is shared across cores.
    pub fn shard_max_connections(&self) -> Option<u64> {
        self.max_connections
            .map(|max| (max / self.shards.max(1)).max(1) as u64)
    }

    /// The start-up line about limits and shutdown.
    pub fn limits_summary(&self) -> String {
        format!(
            "limits: max connections {}, idle timeout {}, shutdown timeout {:?}, metrics {}",
            match (self.max_connections, self.shard_max_connections()) {
                (Some(max), Some(per)) => format!("{max} ({per} per shard)"),
                _ => "unlimited".to_string(),
            },
            self.idle_timeout
                .map_or("none".to_string(), |t| format!("{t:?}")),
            self.shutdown_timeout,
            self.metrics
                .map_or("off".to_string(), |a| format!("http://{a}/metrics")),
        )
    }

    /// Each shard's memory budget.
    pub fn shard_memory(&self) -> u64 {
        self.max_memory / self.shards as u64
    }
}

/// Where each shard runs: `Some(cpu)` pinned to that core, `None` unpinned.
///
/// Explicit `--cpus` are used as given. Otherwise shards are pinned one per online core when
/// there are enough cores, and left unpinned when there are more shards than cores (local
/// clusters and tests), because two pinned shards on one core would starve each other's
/// latency without the operator having asked for it.
pub fn plan_placement(shards: usize, explicit: &[usize], online: &[usize]) -> Vec<Option<usize>> {
    if !explicit.is_empty() {
        return explicit.iter().take(shards).map(|&c| Some(c)).collect();
    }
    if shards <= online.len() {
        online.iter().take(shards).map(|&c| Some(c)).collect()
    } else {
        vec![None; shards]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig {
            node_id: 1,
            listen: "127.0.0.1:7000".parse().unwrap(),
            shards: 2,
            cpus: vec![],
            max_memory: 1 << 30,
            max_key_len: 64 << 10,
            max_value_len: 16 << 20,
            max_frame: 17 << 20,
            forward_timeout: Duration::from_secs(2),
            grpc: "127.0.0.1:50051".parse().unwrap(),
            grpc_max_message: 17 << 20,
            durability: None,
            shutdown_timeout: Duration::from_secs(10),
            metrics: None,
            max_connections: None,
            idle_timeout: None,
            cluster: crate::cluster::Membership::single(1, "127.0.0.1:7000".parse().unwrap()),
            replication: Default::default(),
            tombstone_grace: Duration::from_secs(3600),
            hint_max_bytes: 64 << 20,
            hint_max_age: Duration::from_secs(600),
            heartbeat: Duration::from_millis(500),
            stream_rate: 64 << 20,
            join: None,
            cluster_of_one: false,
        }
    }

    #[test]
    fn a_node_started_alone_keeps_tombstones_because_it_can_grow() {
        assert_eq!(config().tombstone_grace_ms(), 3_600_000);
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
        assert_eq!(config().shard_ports(), vec![7001, 7002]);
        assert_eq!(config().shard_memory(), 512 << 20);
    }

    #[test]
    fn every_problem_is_reported() {
        let mut c = config();
        c.listen.set_port(0);
        c.max_frame = 10;
        c.cpus = vec![0];
        let err = c.validate().unwrap_err();
        assert_eq!(err.lines().count(), 3, "{err}");
        assert!(err.contains("explicit port"));
        assert!(err.contains("--max-frame"));
        assert!(err.contains("--cpus"));
    }

    #[test]
    fn grpc_port_and_message_limit() {
        let mut c = config();
        c.grpc = "127.0.0.1:7002".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("collides"));
        c.grpc = "0.0.0.0:7000".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("collides"));
        c.grpc = "127.0.0.2:7002".parse().unwrap();
        assert_eq!(c.validate(), Ok(()));
        c.grpc.set_port(0);
        c.grpc_max_message = 4 << 20;
        let err = c.validate().unwrap_err();
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(err.contains("--grpc needs an explicit port"));
        assert!(err.contains("--grpc-max-message"));
    }

    #[test]
    fn a_segment_must_hold_the_largest_record() {
        let mut c = config();
        c.durability = Some(Durability {
            data_dir: "/tmp/x".into(),
            wal: kvmesh_wal::Config {
                segment_size: 1 << 20,
                ..kvmesh_wal::Config::default()
            },
            snapshot_factor: 4.0,
        });
        assert!(c.validate().unwrap_err().contains("--wal-segment-size"));
        c.max_value_len = 64 << 10;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn operations_settings() {
        let mut c = config();
        c.max_connections = Some(5);
        assert_eq!(c.shard_max_connections(), Some(2));
        c.max_connections = Some(1);
        c.shutdown_timeout = Duration::ZERO;
        c.idle_timeout = Some(Duration::ZERO);
        c.metrics = Some("127.0.0.1:7001".parse().unwrap());
        let err = c.validate().unwrap_err();
        assert_eq!(err.lines().count(), 4, "{err}");
        c = config();
        c.metrics = Some("127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_cluster_of_more_than_one_needs_a_data_dir() {
        let mut c = config();
        let members = vec![(1, c.listen), (2, "127.0.0.1:7100".parse().unwrap())];
        c.cluster = crate::cluster::Membership::new("c", 1, c.listen, members).unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.contains("needs --data-dir"), "{err}");
        assert!(err.contains("lists 2 members"), "{err}");
        c.durability = Some(Durability {
            data_dir: "/tmp/x".into(),
            wal: kvmesh_wal::Config::default(),
            snapshot_factor: crate::node::durable::DEFAULT_SNAPSHOT_FACTOR,
        });
        c.max_value_len = 1 << 20;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn port_range_overflow() {
        let mut c = config();
        c.listen.set_port(65534);
        assert!(c.validate().unwrap_err().contains("no room"));
    }

    #[test]
    fn placement() {
        assert_eq!(plan_placement(2, &[], &[0, 1]), vec![Some(0), Some(1)]);
        assert_eq!(plan_placement(1, &[], &[0, 1]), vec![Some(0)]);
        assert_eq!(plan_placement(3, &[], &[0, 1]), vec![None, None, None]);
        assert_eq!(plan_placement(2, &[1, 0], &[0, 1]), vec![Some(1), Some(0)]);
    }
}
