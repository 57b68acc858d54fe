//! Bootstrap safety. A node started with `--peers` and an empty data directory bootstraps the
//! topology group afresh ([`super::RaftDriver::open`]). That is right at a cluster's first
//! start, and wrong when the cluster already exists: the node's Raft memory (its votes, the
//! entries it acknowledged) was lost with its disk, and a fresh bootstrap would let it vote
//! with a blank record, or would give it a member list the cluster has since changed. So it
//! first asks every peer, all at once ([`ask`]: shard 0's `OP_TOPOLOGY`) and refuses ([`verdict`]) when
//! one of them says the cluster has moved past its bootstrap (epoch above 1, or a change
//! running) or heard from this node's Raft group before (`Topology.raft_heard`: this node ran
//! and lost its state, a wiped former leader included).
//!
//! A peer may take [`ask_within`] (3 s, or `--forward-timeout` when longer) to answer; one
//! that accepted the connection but did not answer in time (busy, or starting too) is asked
//! once more, then it is not counted: at a first start the others are starting too (they
//! accept connections once bound, and answer only once they serve), so a first start waits
//! at most twice [`ask_within`]. The
//! `raft_heard` record lives in memory: a wiped node whose peers all restarted since it last
//! talked to them is not caught here (the leader's heartbeat still catches most such cases,
//! see `RaftDriver::run`).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use kvmesh_net::ring::NodeId;
use kvmesh_net::Connection;
use kvmesh_proto::wire::{Op, OpCode};

/// The least time one peer is given to answer, connect included.
pub const ASK_AT_LEAST: Duration = Duration::from_secs(3);

/// How long one peer may take to answer: [`ASK_AT_LEAST`], or `forward_timeout` when longer.
pub fn ask_within(forward_timeout: Duration) -> Duration {
    forward_timeout.max(ASK_AT_LEAST)
}

/// What asking one peer gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    Answered(PeerView),
    /// It accepted the connection and then did not answer in time (or closed it).
    Silent,
    /// No connection: nothing listens there (it is down), or the connect timed out.
    Unreachable,
}

/// What one peer said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub addr: SocketAddr,
    pub epoch: u64,
    pub changing: bool,
    /// Its Raft group accepted messages from this node since it started.
    pub heard_me: bool,
}

/// Whether a node with an empty data directory may bootstrap, given what its peers said.
pub fn verdict(views: &[PeerView]) -> Result<(), String> {
    let Some(v) = views
        .iter()
        .find(|v| v.epoch > 1 || v.changing || v.heard_me)
    else {
        return Ok(());
    };
    let why = if v.heard_me {
        "it heard from this node before"
    } else {
        "the topology changed since its bootstrap"
    };
    Err(format!(
        "this node's data directory is empty but the cluster exists (epoch {} at {}; {why}): \
         start it with --join",
        v.epoch, v.addr
    ))
}

/// Asks the peer at `addr` (its wire port) what shard 0 knows, within `within`.
pub async fn ask(me: NodeId, addr: SocketAddr, within: Duration) -> Asked {
    let connected = Rc::new(Cell::new(false));
    let answer =
        futures_lite::future::or(ask_unbounded(me, addr, within, connected.clone()), async {
            glommio::timer::sleep(within).await;
            None
        })
        .await;
    match answer {
        Some(view) => Asked::Answered(view),
        None if connected.get() => Asked::Silent,
        None => Asked::Unreachable,
    }
}

async fn ask_unbounded(
    me: NodeId,
    addr: SocketAddr,
    within: Duration,
    connected: Rc<Cell<bool>>,
) -> Option<PeerView> {
    let topology_op = || Op {
        code: OpCode::OpTopology as i32,
        ..Op::default()
    };
    let mut conn = Connection::connect(addr, within).await.ok()?;
    connected.set(true);
    let front = conn.call(vec![topology_op()]).await.ok()?.pop()?.topology?;
    let port = u16::try_from(*front.shard_ports.first()?).ok()?;
    let mut conn = Connection::connect(SocketAddr::new(addr.ip(), port), within)
        .await
        .ok()?;
    let t = conn.call(vec![topology_op()]).await.ok()?.pop()?.topology?;
    Some(PeerView {
        addr,
        epoch: t.epoch,
        changing: t.transition.is_some(),
        heard_me: t.raft_heard.contains(&me),
    })
}

/// Asks one peer, and once more when it was [`Asked::Silent`]; `None` when it did not answer.
async fn ask_twice(me: NodeId, id: NodeId, addr: SocketAddr, within: Duration) -> Option<PeerView> {
    for attempt in 1..=2 {
        match ask(me, addr, within).await {
            Asked::Answered(view) => return Some(view),
            Asked::Unreachable => {
                tracing::debug!("bootstrap: peer node {id} at {addr} is unreachable");
                return None;
            }
            Asked::Silent => tracing::info!(
                "bootstrap: peer node {id} at {addr} accepted but did not answer within \
                 {within:?} (attempt {attempt} of 2)"
            ),
        }
    }
    None
}

/// Asks every peer in `peers` (not this node) at once, each within `within` and once more
/// when it accepted but did not answer, and gives the [`verdict`].
pub async fn check(
    me: NodeId,
    peers: &[(NodeId, SocketAddr)],
    within: Duration,
) -> Result<(), String> {
    let asking: Vec<_> = peers
        .iter()
        .filter(|(id, _)| *id != me)
        .map(|&(id, addr)| glommio::spawn_local(ask_twice(me, id, addr, within)))
        .collect();
    let mut views = Vec::new();
    for task in asking {
        views.extend(task.await);
    }
    verdict(&views)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epoch: u64, changing: bool, heard_me: bool) -> PeerView {
        PeerView {
            addr: SocketAddr::from(([10, 0, 0, 2], 7000)),
            epoch,
            changing,
            heard_me,
        }
    }

    #[test]
    fn a_peer_gets_at_least_3_s_or_the_forward_timeout() {
        assert_eq!(ask_within(Duration::from_secs(2)), Duration::from_secs(3));
        assert_eq!(ask_within(Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn a_first_start_bootstraps_and_an_existing_cluster_refuses() {
        assert_eq!(verdict(&[]), Ok(()), "no peer answered: a first start");
        assert_eq!(
            verdict(&[view(0, false, false), view(1, false, false)]),
            Ok(())
        );
        assert_eq!(
            verdict(&[view(1, false, false), view(1, false, true)]),
            Err(
                "this node's data directory is empty but the cluster exists (epoch 1 at \
                 10.0.0.2:7000; it heard from this node before): start it with --join"
                    .into()
            )
        );
        assert!(verdict(&[view(3, false, false)])
            .unwrap_err()
            .contains("(epoch 3 at 10.0.0.2:7000; the topology changed since its bootstrap)"));
        assert!(verdict(&[view(2, true, false)]).is_err());
    }
}
