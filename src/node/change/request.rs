//! The requests that start or stop a change: a node asking to join (`kvmesh node --join`),
//! and `OP_JOIN` / `OP_LEAVE` / `OP_ABORT` answered by a member, which proposes the change (or
//! its abort) and waits for it to be agreed.

use super::*;

/// Answers `OP_JOIN` and `OP_LEAVE` (see `wire.proto`).
pub async fn answer(ctx: &ShardCtx, op: &Op) -> OpResult {
    let Some(raft) = &ctx.raft else {
        return reply::status(
            Status::Unavailable,
            "membership changes are asked of shard 0 of a member of a multi-node cluster \
             (this shard runs no topology Raft group)",
        );
    };
    if op.code == OpCode::OpAbort as i32 {
        return abort(raft, op.abort_epoch).await;
    }
    let me = ctx.peers.membership().me;
    let command = if op.code == OpCode::OpJoin as i32 {
        let Some(hello) = &op.hello else {
            return reply::status(Status::InvalidArgument, "OP_JOIN without a hello");
        };
        if hello.cluster != ctx.config.cluster.cluster {
            return reply::status(
                Status::Refused,
                format!(
                    "node {} is in cluster {:?}, not {:?} (--cluster)",
                    hello.node_id, hello.cluster, ctx.config.cluster.cluster
                ),
            );
        }
        let member = match check_joining(ctx, &raft.topology(), hello) {
            Ok(member) => member,
            Err(why) => {
                tracing::warn!("refused a join: {why}");
                return reply::status(Status::Refused, format!("OP_JOIN: {why}"));
            }
        };
        Command::BeginJoin(member)
    } else {
        let id = if op.leave_id == 0 { me } else { op.leave_id };
        Command::BeginLeave {
            id,
            replicas: ctx.config.replication.replicas as u32,
            force: op.force,
            down: id != me && is_down(ctx, &raft.topology(), id).await,
        }
    };
    let began = Instant::now();
    let mut proposed: Option<Instant> = None;
    let nonce = raft.nonce();
    loop {
        let topology = raft.topology();
        if let Some(answer) = agreed(&topology, &command) {
            return answer;
        }
        if let Some(refused) = raft.refusal(nonce) {
            return refusal(&refused);
        }
        if let Some(t) = &topology.transition {
            let busy = Refused::Busy {
                epoch: topology.epoch,
                change: t.change.to_string(),
            };
            return reply::status(Status::Busy, busy.to_string());
        }
        if began.elapsed() > AGREE_WITHIN {
            return reply::status(
                Status::Unavailable,
                format!(
                    "the change was not agreed within {AGREE_WITHIN:?} (is a majority of the \
                     members up?); ask again"
                ),
            );
        }
        if proposed.is_none_or(|at| at.elapsed() > PROPOSE_AGAIN) {
            proposed = Some(Instant::now());
            if let Err(e) = raft.propose(&command, nonce) {
                tracing::debug!("{e}");
            }
        }
        glommio::timer::sleep(LOOK_EVERY).await;
    }
}

/// Answers `OP_ABORT`: proposes `Abort` of the running change (the one of epoch `asked`, when
/// not 0) until the agreed topology shows it aborted (the old members at a later epoch) or
/// finished first (REFUSED). A change already aborted (`asked` is the last one this node saw
/// aborted) is answered OK, so a retry after an UNAVAILABLE whose abort committed succeeds.
async fn abort(raft: &super::super::raft::RaftDriver, asked: u64) -> OpResult {
    let topology = raft.topology();
    let running = topology.transition.as_ref().map(|t| (topology.epoch, t));
    let Some((epoch, t)) = running.filter(|(e, _)| asked == 0 || *e == asked) else {
        if asked != 0 && raft.last_aborted() == asked {
            return OpResult {
                message: format!(
                    "the change of epoch {asked} was aborted already; the topology is at epoch {}",
                    topology.epoch
                ),
                moved_epoch: asked,
                ..OpResult::default()
            };
        }
        let what = match asked {
            0 => "no membership change runs".to_string(),
            _ => format!("the change of epoch {asked} no longer runs"),
        };
        return reply::status(
            Status::Refused,
            format!("{what} (the topology is at epoch {})", topology.epoch),
        );
    };
    let (old, change) = (t.old.clone(), t.change);
    tracing::warn!("aborting the membership change of epoch {epoch} ({change})");
    let command = Command::Abort { epoch };
    let began = Instant::now();
    let mut proposed: Option<Instant> = None;
    loop {
        let now = raft.topology();
        if now.epoch > epoch {
            return match now.members == old {
                true => OpResult {
                    message: format!(
                        "the change of epoch {epoch} ({change}) was aborted; the topology is \
                         at epoch {} with its old members",
                        now.epoch
                    ),
                    moved_epoch: epoch,
                    ..OpResult::default()
                },
                false => reply::status(
                    Status::Refused,
                    format!("the change of epoch {epoch} ({change}) finished before the abort"),
                ),
            };
        }
        if began.elapsed() > AGREE_WITHIN {
            return OpResult {
                moved_epoch: epoch,
                ..reply::status(
                    Status::Unavailable,
                    format!(
                        "the abort was not agreed within {AGREE_WITHIN:?} (is a majority of \
                         the members up?); ask again"
                    ),
                )
            };
        }
        if proposed.is_none_or(|at| at.elapsed() > PROPOSE_AGAIN) {
            proposed = Some(Instant::now());
            if let Err(e) = raft.propose(&command, 0) {
                tracing::debug!("{e}");
            }
        }
        glommio::timer::sleep(LOOK_EVERY).await;
    }
}

/// The member a joining node's `hello` describes, or why it may not join: a usable id (not
/// 0, Raft's "no node"), a readable, specified address with a port, shard ports that match its
/// shard count (each a real port), and, for an id that is a member already, the same address.
fn check_joining(
    ctx: &ShardCtx,
    topology: &Topology,
    hello: &wire::Hello,
) -> Result<Member, String> {
    let id = hello.node_id;
    if id == 0 {
        return Err("node id 0 is reserved; give the joining node --id 1 or more".into());
    }
    ctx.peers.membership().check_identity(hello, None)?;
    let addr = hello
        .addr
        .parse::<SocketAddr>()
        .map_err(|_| format!("node {id}: unreadable address {:?}", hello.addr))?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(format!(
            "node {id}: {addr} is not an address other nodes can reach (--advertise)"
        ));
    }
    if let Some(&bad) = hello
        .shard_ports
        .iter()
        .find(|&&p| p == 0 || p > u32::from(u16::MAX))
    {
        return Err(format!("node {id}: shard port {bad} is not a port"));
    }
    match topology.member(id) {
        Some(m) if m.addr != addr => Err(format!(
            "node {id} is a member already, at {} (not {addr})",
            m.addr
        )),
        _ => Ok(Member { id, addr }),
    }
}

/// Whether member `id` (not this node) is down: it does not answer an `OP_TOPOLOGY` on its
/// shard 0 within `--forward-timeout`. A node that is not a member is not down (the state
/// machine refuses its leave).
async fn is_down(ctx: &ShardCtx, topology: &Topology, id: NodeId) -> bool {
    if topology.member(id).is_none() {
        return false;
    }
    let op = Op {
        code: OpCode::OpTopology as i32,
        ..Op::default()
    };
    let sent = ctx.peers.send_to_shard(id, 0, vec![op]).await;
    match ctx.peers.wait(sent).await {
        Ok(_) => false,
        Err(e) => {
            tracing::warn!("removing node {id}, which is down ({e}): it streams nothing");
            true
        }
    }
}

/// The answer for `command` if the agreed topology already shows it.
fn agreed(topology: &Topology, command: &Command) -> Option<OpResult> {
    let ok = |what: String| OpResult {
        message: what,
        topology: Some(Box::new(wire::Topology {
            epoch: topology.epoch,
            members: topology
                .members
                .iter()
                .copied()
                .map(member_to_wire)
                .collect(),
            transition: topology_to_wire(topology).transition,
            ..wire::Topology::default()
        })),
        ..OpResult::default()
    };
    match (command, topology.transition.as_ref().map(|t| t.change)) {
        (Command::BeginJoin(m), Some(Change::Join(j))) if j == *m => Some(ok(format!(
            "node {} joins at epoch {}",
            m.id, topology.epoch
        ))),
        (Command::BeginJoin(m), _) if topology.member(m.id) == Some(*m) => {
            Some(ok(format!("node {} is a member", m.id)))
        }
        (Command::BeginLeave { id, .. }, Some(Change::Leave(l))) if l == *id => {
            let down = topology.transition.as_ref().is_some_and(|t| t.down);
            Some(ok(format!(
                "node {id} leaves at epoch {}{}",
                topology.epoch,
                if down {
                    " (it is down: its keys stream from their other owners)"
                } else {
                    ""
                }
            )))
        }
        _ => None,
    }
}

fn refusal(refused: &Refused) -> OpResult {
    let status = match refused {
        Refused::Busy { .. } => Status::Busy,
        _ => Status::Refused,
    };
    reply::status(status, refused.to_string())
}

/// A node started with `--join SEED`: asks the cluster at `seed` to take it in, again and
/// again until the agreed topology has it joining, then routes by the members the answer
/// lists (on every shard) until its own topology group has caught up.
pub async fn join(
    config: &NodeConfig,
    peers: &Rc<Peers>,
    mesh: &Rc<Mesh>,
    seed: SocketAddr,
) -> Result<(), String> {
    let hello = peers.membership().hello(&wire::Topology {
        shards: config.shards as u32,
        shard_ports: config.shard_ports(),
        ..wire::Topology::default()
    });
    let mut last = String::new();
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        // Bounded per call, so a seed that hangs cannot hold the join past `give_up`.
        let asked =
            futures_lite::future::or(ask_to_join(seed, &hello, config.forward_timeout), async {
                glommio::timer::sleep(ASK_WITHIN).await;
                Err(format!("{seed} did not answer within {ASK_WITHIN:?}"))
            });
        match asked.await {
            Ok(result) if result.status() == Status::Ok => {
                tracing::info!("join: {} (asked {seed})", result.message);
                let topology = result.topology.unwrap_or_default();
                let members = wire::ClusterTopology {
                    cluster_id: 0,
                    epoch: 0,
                    members: topology.members,
                    transition: None,
                };
                peers.apply_topology(&members);
                mesh.broadcast_topology(&members);
                return Ok(());
            }
            Ok(result) if result.status() == Status::Refused => {
                return Err(format!(
                    "the cluster at {seed} refused the join: {}",
                    result.message
                ))
            }
            Ok(result) => last = result.message,
            Err(e) => last = e,
        }
        if !last.is_empty() {
            tracing::info!("join: not yet: {last}; asking again");
        }
        glommio::timer::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "the cluster at {seed} did not take this node in: {last}"
    ))
}

/// One `OP_JOIN` to shard 0 of the node at `seed` (its shard ports from `OP_TOPOLOGY`).
async fn ask_to_join(
    seed: SocketAddr,
    hello: &wire::Hello,
    timeout: Duration,
) -> Result<OpResult, String> {
    let mut conn = Connection::connect(seed, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let topology = conn
        .call(vec![Op {
            code: OpCode::OpTopology as i32,
            ..Op::default()
        }])
        .await
        .map_err(|e| e.to_string())?
        .pop()
        .and_then(|r| r.topology)
        .ok_or("the seed did not tell its topology")?;
    let port = *topology
        .shard_ports
        .first()
        .ok_or("the seed has no shard ports")?;
    let mut conn = Connection::connect(SocketAddr::new(seed.ip(), port as u16), AGREE_WITHIN * 2)
        .await
        .map_err(|e| e.to_string())?;
    conn.call(vec![Op {
        code: OpCode::OpJoin as i32,
        hello: Some(Box::new(hello.clone())),
        ..Op::default()
    }])
    .await
    .map_err(|e| e.to_string())?
    .pop()
    .ok_or_else(|| "no answer".to_string())
}
