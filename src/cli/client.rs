//! `kvmesh put|get|remove|stats`: one-off commands over the wire protocol, each going straight
//! to the node, and the shard, that owns the key. `stats` shows the cluster view (every member,
//! whether it answers now, its keys) and the contacted node's counters.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use kvmesh_net::client::MemberStats;
use kvmesh_net::Client;
use kvmesh_proto::wire::{OpCode, ShardStats, Status};

use crate::units::parse_duration;

#[derive(Args, Debug)]
pub struct Target {
    /// Any wire port of any node of the cluster.
    #[arg(long, default_value = "127.0.0.1:7000", value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// Give up on connecting or on a reply after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    key: String,
    value: String,
    /// Expire the key this many seconds from now; 0 means never.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    ttl: u64,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    key: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    key: String,
    /// Read node NODE's own copy (its id), without coordination, and print its version on
    /// stderr: for seeing divergence and repair between replicas.
    #[arg(long, value_name = "NODE")]
    replica: Option<u32>,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

pub fn put(args: PutArgs) -> anyhow::Result<i32> {
    let ttl = (args.ttl > 0).then(|| Duration::from_secs(args.ttl));
    with_client(&args.target, move |mut client| async move {
        client
            .put(args.key.as_bytes(), args.value.as_bytes(), ttl)
            .await?;
        Ok(0)
    })
}

pub fn get(args: GetArgs) -> anyhow::Result<i32> {
    if let Some(node) = args.replica {
        return get_replica(args.key, node, &args.target);
    }
    with_client(&args.target, move |mut client| async move {
        match client.get(args.key.as_bytes()).await? {
            Some(value) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&value)?;
                out.write_all(b"\n")?;
                Ok(0)
            }
            None => {
                eprintln!("kvmesh: key not found: {}", args.key);
                Ok(1)
            }
        }
    })
}

/// `kvmesh get KEY --replica NODE`: node NODE's own copy, on its owning shard's port.
fn get_replica(key: String, node: u32, target: &Target) -> anyhow::Result<i32> {
    let timeout = target.timeout;
    with_client(target, move |client| async move {
        let addr = client
            .members()
            .into_iter()
            .find(|(id, _)| *id == node)
            .map(|(_, addr)| addr)
            .ok_or_else(|| anyhow!("node {node} is not a member of this cluster"))?;
        let mut there = Client::connect(addr, timeout).await?;
        let shard = kvmesh_net::shard_for(key.as_bytes(), there.topology().shards as usize);
        let op = kvmesh_proto::wire::Op {
            replica: true,
            ..kvmesh_net::client::op(OpCode::OpGet, key.as_bytes(), b"", 0)
        };
        let result = there
            .contacted_shard(shard)
            .await?
            .call(vec![op])
            .await?
            .pop()
            .ok_or_else(|| anyhow!("node {node} sent an empty reply"))?;
        let version = format!("version {}.{}", result.version_hlc, result.version_node);
        match result.status() {
            Status::Ok => {
                let mut out = std::io::stdout().lock();
                out.write_all(&result.value)?;
                out.write_all(b"\n")?;
                eprintln!("kvmesh: node {node}'s copy: {version}");
                Ok(0)
            }
            Status::NotFound if result.version_hlc != 0 => {
                eprintln!("kvmesh: node {node} holds {key} as removed ({version})");
                Ok(1)
            }
            Status::NotFound => {
                eprintln!("kvmesh: node {node} holds no copy of {key}");
                Ok(1)
            }
            other => Err(anyhow!("node {node}: {other:?}: {}", result.message)),
        }
    })
}

pub fn remove(args: KeyArgs) -> anyhow::Result<i32> {
    with_client(&args.target, move |mut client| async move {
        let existed = client.remove(args.key.as_bytes()).await?;
        if !existed {
            eprintln!("kvmesh: {} was not there (nothing to remove)", args.key);
        }
        Ok(0)
    })
}

pub fn stats(args: StatsArgs) -> anyhow::Result<i32> {
    with_client(&args.target, move |mut client| async move {
        let node_id = client.topology().node_id;
        let cluster = client.topology().cluster.clone();
        let members = client.cluster_stats().await;
        let shards = match members.iter().find(|m| m.id == node_id).map(|m| &m.shards) {
            Some(Ok(shards)) => shards.clone(),
            Some(Err(e)) => return Err(anyhow!("{e}")),
            None => client.stats().await?,
        };
        let view: Vec<MemberView> = members.iter().map(MemberView::from).collect();
        let text = if args.json {
            let json = stats_json(node_id, &shards);
            format!(
                "{},\"cluster\":{:?},\"members\":{}}}",
                &json[..json.len() - 1],
                cluster,
                members_json(&view)
            )
        } else {
            let mut text = format!(
                "{}\n\n{}",
                members_table(&cluster, &view),
                stats_table(node_id, &shards)
            );
            let mine = vec![shards.iter().collect::<Vec<&ShardStats>>()];
            let all: Vec<Vec<&ShardStats>> = members
                .iter()
                .filter_map(|m| m.shards.as_ref().ok())
                .map(|s| s.iter().collect())
                .collect();
            let lines = [
                stream_summary(&format!("node {node_id}"), &mine),
                stream_summary("cluster", &all).filter(|_| members.len() > 1),
            ];
            for line in lines.into_iter().flatten() {
                text.push_str("\n\n");
                text.push_str(&line);
            }
            text
        };
        writeln!(std::io::stdout().lock(), "{text}")?;
        Ok(0)
    })
}

/// One member as `kvmesh stats` shows it: reachable now or not, and its keys.
struct MemberView {
    id: u32,
    addr: String,
    /// `Ok(keys)` when it answered now, else why not.
    keys: Result<u64, String>,
}

impl From<&MemberStats> for MemberView {
    fn from(m: &MemberStats) -> Self {
        MemberView {
            id: m.id,
            addr: m.addr.to_string(),
            keys: match &m.shards {
                Ok(shards) => Ok(shards.iter().map(|s| s.keys).sum()),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

fn members_table(cluster: &str, members: &[MemberView]) -> String {
    let mut out = format!(
        "cluster {cluster:?}: {} member(s)\n{:<8} {:<22} {:>12}  reachable",
        members.len(),
        "member",
        "address",
        "keys"
    );
    for m in members {
        let (reachable, keys) = match &m.keys {
            Ok(keys) => ("yes".to_string(), keys.to_string()),
            Err(why) => (format!("no ({why})"), "-".to_string()),
        };
        out.push_str(&format!(
            "\n{:<8} {:<22} {:>12}  {reachable}",
            m.id, m.addr, keys
        ));
    }
    out
}

fn members_json(members: &[MemberView]) -> String {
    let items: Vec<String> = members
        .iter()
        .map(|m| match &m.keys {
            Ok(keys) => format!(
                "{{\"id\":{},\"addr\":{:?},\"reachable\":true,\"keys\":{keys}}}",
                m.id, m.addr
            ),
            Err(why) => format!(
                "{{\"id\":{},\"addr\":{:?},\"reachable\":false,\"error\":{why:?}}}",
                m.id, m.addr
            ),
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Connects on a fresh single-threaded executor and runs `body` with the client.
fn with_client<F, Fut>(target: &Target, body: F) -> anyhow::Result<i32>
where
    F: FnOnce(Client) -> Fut + 'static,
    Fut: Future<Output = anyhow::Result<i32>> + 'static,
{
    connected(target.addr, target.timeout, body)
}

/// Connects to `addr` on a fresh single-threaded executor, giving up after `timeout`, and runs
/// `body` with the client: what every one-shot command (`get`, `leave`, `abort`...) does.
pub(crate) fn connected<F, Fut>(addr: SocketAddr, timeout: Duration, body: F) -> anyhow::Result<i32>
where
    F: FnOnce(Client) -> Fut + 'static,
    Fut: Future<Output = anyhow::Result<i32>> + 'static,
{
    crate::node::raise_memlock().map_err(|e| anyhow!(e))?;
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| anyhow!("cannot start an io_uring executor: {e}"))?;
    executor.run(async move {
        let client = Client::connect(addr, timeout).await?;
        body(client).await
    })
}

/// Counters `kvmesh stats` shows.
const COLUMNS: usize = 45;

/// Counter columns: (header, value).
fn columns(s: &ShardStats) -> [(&'static str, u64); COLUMNS] {
    [
        ("keys", s.keys),
        ("bytes_used", s.bytes_used),
        ("max_bytes", s.max_bytes),
        ("hits", s.hits),
        ("misses", s.misses),
        ("evictions", s.evictions),
        ("expirations", s.expirations),
        ("gets", s.gets),
        ("puts", s.puts),
        ("removes", s.removes),
        ("touches", s.touches),
        ("forwarded_out", s.forwarded_out),
        ("forwarded_in", s.forwarded_in),
        ("node_forwarded_out", s.node_forwarded_out),
        ("node_forwarded_in", s.node_forwarded_in),
        ("connections_open", s.connections_open),
        ("protocol_errors", s.protocol_errors),
        ("wal_records", s.wal_records),
        ("wal_writes", s.wal_writes),
        ("wal_syncs", s.wal_syncs),
        ("wal_bytes", s.wal_bytes),
        ("wal_failed", s.wal_failed),
        ("wal_write_us", s.wal_write_us),
        ("wal_sync_us", s.wal_sync_us),
        ("replica_writes_sent", s.replica_writes_sent),
        ("replica_writes_failed", s.replica_writes_failed),
        ("replica_writes_applied", s.replica_writes_applied),
        ("hints_queued", s.hints_queued),
        ("hints_bytes", s.hints_bytes),
        ("hints_delivered", s.hints_delivered),
        ("hints_dropped", s.hints_dropped),
        ("peers_down", s.peers_down),
        ("peer_down_events", s.peer_down_events),
        ("quorum_reads", s.quorum_reads),
        ("read_repairs", s.read_repairs),
        ("stream_ranges_pending", s.stream_ranges_pending),
        ("stream_keys_planned", s.stream_keys_planned),
        ("stream_bytes_planned", s.stream_bytes_planned),
        ("stream_keys_acked", s.stream_keys_acked),
        ("stream_bytes_acked", s.stream_bytes_acked),
        ("stream_bytes_sent", s.stream_bytes_sent),
        ("stream_rate", s.stream_rate),
        ("stream_bytes_total", s.stream_bytes_total),
        ("stream_retries", s.stream_retries),
        ("stream_keys_dropped", s.stream_keys_dropped),
    ]
}

/// One line on membership streaming over `nodes` (each node's shards; one node or the whole
/// cluster): its state, ranges pending, progress, rate and ETA, and, once nothing is pending,
/// what the last stream cost against its theoretical minimum. `None` when nothing was ever
/// streamed or planned.
fn stream_summary(scope: &str, nodes: &[Vec<&ShardStats>]) -> Option<String> {
    use crate::node::stream::progress::{bytes_left, eta_secs, StreamState};
    let shards: Vec<&ShardStats> = nodes.iter().flatten().copied().collect();
    let sum = |f: fn(&ShardStats) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    // Every shard of a node counts the node's moved ranges (it streams its slice of each).
    let pending = nodes
        .iter()
        .map(|n| n.iter().map(|s| s.stream_ranges_pending).max().unwrap_or(0))
        .sum::<u64>();
    let is = |state: StreamState| shards.iter().any(|s| s.stream_state == state as u32);
    let state = if is(StreamState::Failed) {
        "failed"
    } else if is(StreamState::Running) {
        "running"
    } else {
        "done"
    };
    let (planned, acked, sent) = (
        sum(|s| s.stream_bytes_planned),
        sum(|s| s.stream_bytes_acked),
        sum(|s| s.stream_bytes_sent),
    );
    let (left, rate, total) = (
        sum(bytes_left),
        sum(|s| s.stream_rate),
        sum(|s| s.stream_bytes_total),
    );
    if planned == 0 && total == 0 {
        return None;
    }
    let size = |b: u64| crate::units::ByteSize(b).to_string();
    let eta = match eta_secs(left, rate) {
        Some(secs) => format!(", ETA {secs} s"),
        None if pending > 0 => ", ETA unknown".to_string(),
        None => String::new(),
    };
    let ratio = if planned == 0 || pending > 0 {
        String::new()
    } else {
        format!(" ({:.3}×)", sent as f64 / planned as f64)
    };
    Some(format!(
        "streaming ({scope}, {state}): {pending} range(s) pending, {} of {} acknowledged, {}/s{eta}; \
         {} streamed vs a theoretical minimum of {}{ratio}; {} streamed since start, {} \
         batch(es) resent, {} key(s) dropped as no longer owned",
        size(acked),
        size(planned),
        size(rate),
        size(sent),
        size(planned),
        size(total),
        sum(|s| s.stream_retries),
        sum(|s| s.stream_keys_dropped),
    ))
}

fn totals(shards: &[ShardStats]) -> Vec<u64> {
    let mut sum = vec![0u64; COLUMNS];
    for s in shards {
        for (total, (_, v)) in sum.iter_mut().zip(columns(s)) {
            *total += v;
        }
    }
    sum
}

/// One row per counter, one column per shard, then the node's total.
fn stats_table(node_id: u32, shards: &[ShardStats]) -> String {
    let mut out = format!("node {node_id}\n{:<22}", "");
    for s in shards {
        out.push_str(&format!(" {:>14}", format!("shard {}", s.shard)));
    }
    out.push_str(&format!(" {:>14}", "total"));
    let per_shard: Vec<[(&str, u64); COLUMNS]> = shards.iter().map(columns).collect();
    for (row, (name, _)) in columns(&ShardStats::default()).iter().enumerate() {
        out.push_str(&format!("\n{name:<22}"));
        for values in &per_shard {
            out.push_str(&format!(" {:>14}", values[row].1));
        }
        out.push_str(&format!(" {:>14}", totals(shards)[row]));
    }
    out
}

fn stats_json(node_id: u32, shards: &[ShardStats]) -> String {
    let object = |pairs: Vec<(&str, u64)>| {
        let fields: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", fields.join(","))
    };
    let per_shard: Vec<String> = shards
        .iter()
        .map(|s| {
            let mut pairs = vec![("shard", u64::from(s.shard))];
            pairs.extend(columns(s));
            object(pairs)
        })
        .collect();
    let headers = columns(&ShardStats::default()).map(|c| c.0);
    let total = object(headers.into_iter().zip(totals(shards)).collect());
    format!(
        "{{\"node_id\":{node_id},\"shards\":[{}],\"total\":{total}}}",
        per_shard.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_show_who_answered() {
        let members = [
            MemberView {
                id: 1,
                addr: "127.0.0.1:7000".into(),
                keys: Ok(5),
            },
            MemberView {
                id: 2,
                addr: "127.0.0.1:7002".into(),
                keys: Err("cannot connect".into()),
            },
        ];
        let table = members_table("local", &members);
        assert!(
            table.starts_with("cluster \"local\": 2 member(s)"),
            "{table}"
        );
        assert!(table.contains("yes"), "{table}");
        assert!(table.contains("no (cannot connect)"), "{table}");
        assert_eq!(
            members_json(&members),
            "[{\"id\":1,\"addr\":\"127.0.0.1:7000\",\"reachable\":true,\"keys\":5},\
             {\"id\":2,\"addr\":\"127.0.0.1:7002\",\"reachable\":false,\"error\":\"cannot connect\"}]"
        );
    }

    #[test]
    fn streaming_is_summed_with_rate_and_eta() {
        use crate::node::stream::progress::StreamState;
        assert_eq!(
            stream_summary("node 1", &[vec![&ShardStats::default()]]),
            None
        );
        let a = ShardStats {
            stream_ranges_pending: 3,
            stream_bytes_planned: 4 << 20,
            stream_bytes_acked: 1 << 20,
            stream_bytes_sent: 2 << 20,
            stream_rate: 1 << 20,
            stream_bytes_total: 2 << 20,
            stream_retries: 2,
            ..ShardStats::default()
        };
        let b = ShardStats {
            stream_bytes_planned: 4 << 20,
            stream_bytes_acked: 4 << 20,
            stream_bytes_sent: 4 << 20,
            stream_bytes_total: 4 << 20,
            ..ShardStats::default()
        };
        // Two shards of one node count its 3 ranges each: 3 pending, not 6.
        let a2 = ShardStats {
            stream_state: StreamState::Running as u32,
            ..a
        };
        let line = stream_summary("cluster", &[vec![&a, &a2], vec![&b]]).unwrap();
        assert_eq!(
            line,
            "streaming (cluster, running): 3 range(s) pending, 6MiB of 12MiB acknowledged, \
             2MiB/s, ETA 3 s; 8MiB streamed vs a theoretical minimum of 12MiB; 8MiB streamed \
             since start, 4 batch(es) resent, 0 key(s) dropped as no longer owned"
        );
        // Nothing pending: the cost ratio; a failed shard fails the summary.
        let done = ShardStats {
            stream_state: StreamState::Done as u32,
            ..b
        };
        let failed = ShardStats {
            stream_state: StreamState::Failed as u32,
            ..b
        };
        let line = stream_summary("node 2", &[vec![&done]]).unwrap();
        assert!(
            line.starts_with("streaming (node 2, done): 0 range(s)"),
            "{line}"
        );
        assert!(line.contains("(1.000×)"), "{line}");
        let line = stream_summary("node 2", &[vec![&done, &failed]]).unwrap();
        assert!(line.starts_with("streaming (node 2, failed)"), "{line}");
    }

    #[test]
    fn json_sums_shards() {
        let a = ShardStats {
            shard: 0,
            keys: 2,
            puts: 5,
            ..ShardStats::default()
        };
        let b = ShardStats {
            shard: 1,
            keys: 3,
            puts: 1,
            ..ShardStats::default()
        };
        let json = stats_json(9, &[a, b]);
        assert!(
            json.starts_with("{\"node_id\":9,\"shards\":[{\"shard\":0,\"keys\":2,"),
            "{json}"
        );
        assert!(json.contains("\"total\":{\"keys\":5,"), "{json}");
        assert!(json.contains("\"puts\":6"), "{json}");
    }
}
