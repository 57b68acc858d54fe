//! Prometheus metrics: `--metrics HOST:PORT` serves `/metrics` in the Prometheus text format.
//!
//! Counters stay where their work is done, as plain fields on the shard's own thread: the
//! store's and the node layer's counters (`ShardStats`, also behind `kvmesh stats`), the log's,
//! and [`ShardMetrics`] (latency histograms, refused and idle-closed connections). Nothing is
//! shared or contended across cores. On a scrape, shard 0, which serves the endpoint, asks
//! every shard for a [`Snapshot`] over a small channel of its own ([`Wiring`]), waits for the
//! answers (at most `--forward-timeout`; a shard that does not answer is left out) and encodes
//! them with `prometheus-client`.
//!
//! - [`latency`]: the histograms (pure);
//! - [`encode`]: snapshots to text (pure);
//! - [`http`]: the HTTP/1 endpoint on glommio, and the gathering.

mod encode;
pub mod http;
pub mod latency;

use std::rc::Rc;

use futures_channel::oneshot;
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use kvmesh_proto::wire::ShardStats;

use crate::node::ShardCtx;

/// What one shard counts for metrics on top of its `ShardStats`. Shard-local.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardMetrics {
    pub latency: latency::Latencies,
    /// Connections refused over the shard's share of `--max-connections`.
    pub connections_refused: u64,
    /// Connections closed by `--idle-timeout`.
    pub connections_idle_closed: u64,
    /// Connections closed without sending their replies because the write-ahead log failed
    /// before the records the fast path's replies waited for were durable (see `node::fast`).
    pub connections_closed_unlogged: u64,
}

/// One shard's numbers at the moment it was asked.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub shard: usize,
    pub stats: ShardStats,
    pub local: ShardMetrics,
    pub serving: bool,
}

/// A request for a snapshot: the shard answers on it.
pub type Ask = oneshot::Sender<Snapshot>;

/// One shard's end of the metrics channels.
pub struct Wiring {
    /// Where this shard is asked for its snapshot.
    inbox: SharedReceiver<Ask>,
    /// For the shard that serves `/metrics`: one sender per shard, in shard order.
    collect: Option<Vec<SharedSender<Ask>>>,
}

/// The wiring of each shard, in shard order; the first shard serves `/metrics`.
pub fn wire(shards: usize) -> Vec<Wiring> {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..shards).map(|_| shared_channel::new_bounded(4)).unzip();
    let mut collect = Some(senders);
    receivers
        .into_iter()
        .map(|inbox| Wiring {
            inbox,
            collect: collect.take(),
        })
        .collect()
}

/// This shard's snapshot.
pub fn snapshot(ctx: &ShardCtx) -> Snapshot {
    let mut stats = ctx.shard.borrow().stats();
    crate::node::annotate_replication(ctx, &mut stats);
    Snapshot {
        shard: ctx.me,
        stats,
        local: ctx.metrics.borrow().clone(),
        serving: ctx.serving.is_serving(),
    }
}

/// Starts this shard's part: answering snapshot requests and, on the serving shard, the
/// endpoint. Returns the endpoint's task (dropping it stops serving), or why it cannot listen.
pub fn start(wiring: Wiring, ctx: &Rc<ShardCtx>) -> Result<Option<glommio::Task<()>>, String> {
    let Wiring { inbox, collect } = wiring;
    let answering = ctx.clone();
    glommio::spawn_local(async move {
        let inbox = inbox.connect().await;
        while let Some(ask) = inbox.recv().await {
            // The asker may have given up; nothing to do then.
            let _ = ask.send(snapshot(&answering));
        }
    })
    .detach();
    match (collect, ctx.config.metrics) {
        (Some(shards), Some(addr)) => {
            let listener = glommio::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot serve metrics on {addr} (--metrics): {e}"))?;
            Ok(Some(glommio::spawn_local(http::serve(
                listener,
                shards,
                ctx.clone(),
            ))))
        }
        _ => Ok(None),
    }
}
