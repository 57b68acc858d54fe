//! [`topology`](super::topology)'s types as the wire protocol carries them (`ClusterTopology`,
//! `TopologyCommand` in `wire.proto`): the payload of a topology Raft entry and the state kept
//! in the data directory. Pure; decoding never panics and says what was wrong.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use kvmesh_proto::wire::{self, topology_command::Command as Wire};
use prost::Message;

use super::topology::{Change, Command, Member, Topology, Transition};

/// Why bytes are not a topology command or state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyDecodeError {
    #[error("not a protobuf message: {0}")]
    Protobuf(String),
    #[error("a topology command with no command")]
    Empty,
    #[error("member {id} has an unreadable address {addr:?}")]
    BadAddress { id: u32, addr: String },
    #[error("a transition that is neither a join nor a leave")]
    NoChange,
}

pub fn encode_command(command: &Command) -> Vec<u8> {
    let command = match command {
        Command::Bootstrap(members) => Wire::Bootstrap(wire::Bootstrap {
            members: members.iter().copied().map(member_to_wire).collect(),
        }),
        &Command::BeginJoin(m) => Wire::BeginJoin(member_to_wire(m)),
        &Command::BeginLeave {
            id,
            replicas,
            force,
            down,
        } => Wire::BeginLeave(wire::BeginLeave {
            id,
            replicas,
            force,
            down,
        }),
        &Command::SourceDone { epoch, node } => Wire::SourceDone(wire::SourceDone { epoch, node }),
        &Command::Finish { epoch } => Wire::Finish(epoch),
        &Command::Abort { epoch } => Wire::Abort(epoch),
    };
    wire::TopologyCommand {
        command: Some(command),
    }
    .encode_to_vec()
}

pub fn decode_command(bytes: &[u8]) -> Result<Command, TopologyDecodeError> {
    let decoded = wire::TopologyCommand::decode(bytes)
        .map_err(|e| TopologyDecodeError::Protobuf(e.to_string()))?;
    Ok(match decoded.command.ok_or(TopologyDecodeError::Empty)? {
        Wire::BeginJoin(m) => Command::BeginJoin(member_from_wire(&m)?),
        Wire::BeginLeave(l) => Command::BeginLeave {
            id: l.id,
            replicas: l.replicas,
            force: l.force,
            down: l.down,
        },
        Wire::SourceDone(d) => Command::SourceDone {
            epoch: d.epoch,
            node: d.node,
        },
        Wire::Finish(epoch) => Command::Finish { epoch },
        Wire::Abort(epoch) => Command::Abort { epoch },
        Wire::Bootstrap(b) => Command::Bootstrap(
            b.members
                .iter()
                .map(member_from_wire)
                .collect::<Result<_, _>>()?,
        ),
    })
}

pub fn topology_to_wire(t: &Topology) -> wire::ClusterTopology {
    wire::ClusterTopology {
        cluster_id: t.cluster_id,
        epoch: t.epoch,
        members: t.members.iter().copied().map(member_to_wire).collect(),
        transition: t.transition.as_ref().map(|t| wire::Transition {
            join: match t.change {
                Change::Join(m) => Some(member_to_wire(m)),
                Change::Leave(_) => None,
            },
            leave: match t.change {
                Change::Leave(id) => id,
                Change::Join(_) => 0,
            },
            old_members: t.old.iter().copied().map(member_to_wire).collect(),
            new_members: t.new.iter().copied().map(member_to_wire).collect(),
            done: t.done.iter().copied().collect(),
            down: t.down,
        }),
    }
}

pub fn topology_from_wire(t: &wire::ClusterTopology) -> Result<Topology, TopologyDecodeError> {
    let members = |ms: &[wire::Member]| -> Result<Vec<Member>, TopologyDecodeError> {
        ms.iter().map(member_from_wire).collect()
    };
    let transition = match &t.transition {
        None => None,
        Some(w) => {
            let change = match (&w.join, w.leave) {
                (Some(m), 0) => Change::Join(member_from_wire(m)?),
                (None, id) if id != 0 => Change::Leave(id),
                _ => return Err(TopologyDecodeError::NoChange),
            };
            Some(Transition {
                change,
                old: members(&w.old_members)?,
                new: members(&w.new_members)?,
                done: w.done.iter().copied().collect::<BTreeSet<_>>(),
                down: w.down,
            })
        }
    };
    Ok(Topology {
        cluster_id: t.cluster_id,
        epoch: t.epoch,
        members: members(&t.members)?,
        transition,
    })
}

pub fn member_to_wire(m: Member) -> wire::Member {
    wire::Member {
        id: m.id,
        addr: m.addr.to_string(),
    }
}

pub fn member_from_wire(m: &wire::Member) -> Result<Member, TopologyDecodeError> {
    let addr: SocketAddr = m
        .addr
        .parse()
        .map_err(|_| TopologyDecodeError::BadAddress {
            id: m.id,
            addr: m.addr.clone(),
        })?;
    Ok(Member { id: m.id, addr })
}
