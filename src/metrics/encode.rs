//! Shard snapshots to the Prometheus text format, through `prometheus-client`. Pure.
//!
//! Every series carries a `shard` label; sum over it for the node. Counters get the `_total`
//! suffix from the encoder.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::latency::{BOUNDS_US, KINDS};
use super::Snapshot;

type Labels = Vec<(&'static str, String)>;

/// The `/metrics` page for these shards.
pub fn render(shards: Vec<Snapshot>) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Shards(shards)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The metrics with one value per shard: name, help, type, value.
type PerShard = (&'static str, &'static str, MetricType, fn(&Snapshot) -> u64);

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;

#[rustfmt::skip]
const PER_SHARD: [PerShard; 39] = [
    ("kvmesh_hits", "Gets that found their key.", COUNTER, |s| s.stats.hits),
    ("kvmesh_misses", "Gets that did not find their key.", COUNTER, |s| s.stats.misses),
    ("kvmesh_evictions", "Keys evicted to stay within --max-memory.", COUNTER,
        |s| s.stats.evictions),
    ("kvmesh_expirations", "Keys dropped because their TTL passed.", COUNTER,
        |s| s.stats.expirations),
    ("kvmesh_keys", "Keys held.", GAUGE, |s| s.stats.keys),
    ("kvmesh_bytes_used", "Bytes charged against the shard's memory: keys, values, per-entry \
        overhead.", GAUGE, |s| s.stats.bytes_used),
    ("kvmesh_max_bytes", "The shard's share of --max-memory.", GAUGE, |s| s.stats.max_bytes),
    ("kvmesh_forwarded_out", "Ops this shard received and sent to their owning shard.", COUNTER,
        |s| s.stats.forwarded_out),
    ("kvmesh_forwarded_in", "Ops this shard executed for another shard.", COUNTER,
        |s| s.stats.forwarded_in),
    ("kvmesh_connections_open", "Client connections open (wire and gRPC).", GAUGE,
        |s| s.stats.connections_open),
    ("kvmesh_connections_accepted", "Client connections accepted (wire and gRPC).", COUNTER,
        |s| s.stats.connections_accepted),
    ("kvmesh_connections_refused", "Client connections refused over the shard's share of \
        --max-connections.", COUNTER, |s| s.local.connections_refused),
    ("kvmesh_connections_idle_closed", "Client connections closed after --idle-timeout without \
        a request.", COUNTER, |s| s.local.connections_idle_closed),
    ("kvmesh_connections_closed_unlogged", "Client connections closed without their replies \
        because the write-ahead log failed before the records they report were durable.",
        COUNTER, |s| s.local.connections_closed_unlogged),
    ("kvmesh_protocol_errors", "Malformed or oversized frames and unknown ops.", COUNTER,
        |s| s.stats.protocol_errors),
    ("kvmesh_shard_serving", "1 while the shard serves, 0 once it drains for shutdown.", GAUGE,
        |s| u64::from(s.serving)),
    ("kvmesh_wal_records", "Records appended to the write-ahead log, sync markers included.",
        COUNTER, |s| s.stats.wal_records),
    ("kvmesh_wal_writes", "Log writes, each a batch of records (group commit): records / writes \
        is the mean batch size.", COUNTER, |s| s.stats.wal_writes),
    ("kvmesh_wal_bytes", "Bytes written to the log, padding included.", COUNTER,
        |s| s.stats.wal_bytes),
    ("kvmesh_wal_syncs", "fdatasync calls on the log.", COUNTER, |s| s.stats.wal_syncs),
    ("kvmesh_wal_write_microseconds", "Time spent in log writes.", COUNTER,
        |s| s.stats.wal_write_us),
    ("kvmesh_wal_sync_microseconds", "Time spent in log syncs.", COUNTER,
        |s| s.stats.wal_sync_us),
    ("kvmesh_wal_failed", "1 once the shard's log has failed (writes refused).", GAUGE,
        |s| s.stats.wal_failed),
    ("kvmesh_node_forwarded_out", "Ops this shard sent to another node.", COUNTER,
        |s| s.stats.node_forwarded_out),
    ("kvmesh_node_forwarded_in", "Ops this shard served for another node.", COUNTER,
        |s| s.stats.node_forwarded_in),
    ("kvmesh_replica_writes_sent", "Versioned writes this shard sent to other owners as \
        coordinator.", COUNTER, |s| s.stats.replica_writes_sent),
    ("kvmesh_replica_writes_failed", "Versioned writes another owner did not apply (each is \
        hinted).", COUNTER, |s| s.stats.replica_writes_failed),
    ("kvmesh_replica_writes_applied", "Versioned writes this shard applied for a coordinator.",
        COUNTER, |s| s.stats.replica_writes_applied),
    ("kvmesh_read_repairs", "Stale owners sent the newest copy after a quorum read.", COUNTER,
        |s| s.stats.read_repairs),
    ("kvmesh_hints_queued", "Hints held for owners that missed writes.", GAUGE,
        |s| s.stats.hints_queued),
    ("kvmesh_hints_bytes", "Bytes of hints held (key + value + 64 each).", GAUGE,
        |s| s.stats.hints_bytes),
    ("kvmesh_hints_delivered", "Hints delivered to their owner.", COUNTER,
        |s| s.stats.hints_delivered),
    ("kvmesh_hints_dropped", "Hints dropped past --hint-max-bytes or --hint-max-age.", COUNTER,
        |s| s.stats.hints_dropped),
    ("kvmesh_peers_down", "Peers this shard believes down now.", GAUGE,
        |s| s.stats.peers_down),
    ("kvmesh_stream_ranges_pending", "Moved ring ranges whose keys this shard has not finished \
        streaming to their new owners.", GAUGE, |s| s.stats.stream_ranges_pending),
    ("kvmesh_stream_bytes_left", "Key + value bytes the current stream still has to have \
        acknowledged.", GAUGE, |s| crate::node::stream::progress::bytes_left(&s.stats)),
    ("kvmesh_stream_bytes", "Key + value bytes streamed to new owners after membership \
        changes, resends included.", COUNTER, |s| s.stats.stream_bytes_total),
    ("kvmesh_stream_retries", "Stream batches resent after a failure.", COUNTER,
        |s| s.stats.stream_retries),
    ("kvmesh_stream_keys_dropped", "Keys dropped because this node no longer owns them.",
        COUNTER, |s| s.stats.stream_keys_dropped),
];

#[derive(Debug)]
struct Shards(Vec<Snapshot>);

fn shard(s: &Snapshot) -> Labels {
    vec![("shard", s.shard.to_string())]
}

impl Shards {
    /// One metric family with a value per shard (and per extra label).
    fn family(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help, kind): (&str, &str, MetricType),
        rows: impl Fn(&Snapshot) -> Vec<(Labels, u64)>,
    ) -> fmt::Result {
        let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
        for s in &self.0 {
            for (labels, value) in rows(s) {
                let family = metric.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(value).encode(family)?,
                    _ => ConstGauge::new(value).encode(family)?,
                }
            }
        }
        Ok(())
    }
}

impl Collector for Shards {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let e = &mut e;
        self.family(
            e,
            (
                "kvmesh_ops",
                "Ops executed by the shard that owns their key, by type.",
                MetricType::Counter,
            ),
            |s| {
                let t = &s.stats;
                [
                    ("get", t.gets),
                    ("put", t.puts),
                    ("remove", t.removes),
                    ("touch", t.touches),
                ]
                .into_iter()
                .map(|(op, n)| {
                    let mut labels = shard(s);
                    labels.push(("op", op.to_string()));
                    (labels, n)
                })
                .collect()
            },
        )?;
        for (name, help, kind, value) in PER_SHARD {
            self.family(e, (name, help, kind), |s| vec![(shard(s), value(s))])?;
        }
        let mut metric = e.encode_descriptor(
            "kvmesh_request_duration_seconds",
            "Time from parsing a request to its reply being ready, by op type, at the shard that \
             received it. A request served on the local fast path counts the time from the \
             first fast-path request of its pass over the read buffer to the last (an upper \
             bound for each).",
            None,
            MetricType::Histogram,
        )?;
        for s in &self.0 {
            for (op, h) in KINDS.iter().zip(&s.local.latency.0) {
                let mut labels = shard(s);
                labels.push(("op", op.to_string()));
                let buckets: Vec<(f64, u64)> = BOUNDS_US
                    .iter()
                    .map(|&us| us as f64 / 1e6)
                    .chain([f64::INFINITY])
                    .zip(h.buckets)
                    .collect();
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        h.sum_us as f64 / 1e6,
                        h.count,
                        &buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kvmesh_proto::wire::ShardStats;

    use super::*;
    use crate::metrics::ShardMetrics;

    #[test]
    fn renders_every_shard_with_its_label() {
        let mut local = ShardMetrics::default();
        local.latency.0[0].record(Duration::from_micros(40), 2);
        local.connections_refused = 3;
        let shards = vec![
            Snapshot {
                shard: 0,
                stats: ShardStats {
                    gets: 5,
                    hits: 4,
                    keys: 9,
                    wal_syncs: 2,
                    ..ShardStats::default()
                },
                local,
                serving: true,
            },
            Snapshot {
                shard: 1,
                stats: ShardStats {
                    puts: 7,
                    ..ShardStats::default()
                },
                local: ShardMetrics::default(),
                serving: false,
            },
        ];
        let text = render(shards).unwrap();
        for want in [
            "# TYPE kvmesh_ops counter",
            "kvmesh_ops_total{shard=\"0\",op=\"get\"} 5",
            "kvmesh_ops_total{shard=\"1\",op=\"put\"} 7",
            "kvmesh_hits_total{shard=\"0\"} 4",
            "kvmesh_keys{shard=\"0\"} 9",
            "kvmesh_wal_syncs_total{shard=\"0\"} 2",
            "kvmesh_connections_refused_total{shard=\"0\"} 3",
            "kvmesh_shard_serving{shard=\"1\"} 0",
            "kvmesh_request_duration_seconds_count{shard=\"0\",op=\"get\"} 2",
            "kvmesh_request_duration_seconds_bucket{le=\"0.00005\",shard=\"0\",op=\"get\"} 2",
            "kvmesh_request_duration_seconds_bucket{le=\"0.000025\",shard=\"0\",op=\"get\"} 0",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
    }
}
