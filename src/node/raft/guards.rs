//! What the topology Raft group refuses to step: messages on which raft-rs would abort.

use super::*;

/// Why raft-rs would abort on `message` (its `fatal!` paths, which assume every message comes
/// from a correct member with an intact log), if it would: a heartbeat that commits beyond
/// this node's log, an append that contradicts a committed entry, an acknowledgement of
/// entries the leader does not have; and a snapshot without an index or whose data is not a
/// topology, which no member sends (a member's snapshot holds the applied topology,
/// `storage.rs`): installing it would fail and stop the group for good.
pub(super) fn unsteppable(node: &RawNode<TopologyStorage>, message: &Message) -> Option<String> {
    let log = &node.raft.raft_log;
    let last = log.last_index();
    match message.get_msg_type() {
        MessageType::MsgHeartbeat if message.commit > last => Some(format!(
            "commits index {} but this node's log ends at {last}",
            message.commit
        )),
        MessageType::MsgAppend => message
            .entries
            .iter()
            .filter(|e| e.index <= log.committed)
            .find(|e| log.term(e.index).is_ok_and(|t| t != e.term))
            .map(|e| {
                format!(
                    "entry {} (term {}) contradicts a committed entry",
                    e.index, e.term
                )
            }),
        MessageType::MsgAppendResponse if !message.reject && message.index > last => Some(format!(
            "acknowledges index {} but this node's log ends at {last}",
            message.index
        )),
        MessageType::MsgSnapshot
            if message.get_snapshot().data.is_empty()
                || message.get_snapshot().get_metadata().index == 0 =>
        {
            Some("a snapshot without a topology or an index".to_string())
        }
        MessageType::MsgSnapshot => ClusterTopology::decode(&message.get_snapshot().data[..])
            .map_err(|e| e.to_string())
            .and_then(|wire| topology_from_wire(&wire).map_err(|e| e.to_string()))
            .err()
            .map(|e| format!("a snapshot whose topology does not decode: {e}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::raft::bootstrap;

    fn members() -> Vec<Member> {
        (1..=3)
            .map(|id| Member {
                id,
                addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
            })
            .collect()
    }

    fn node() -> RawNode<TopologyStorage> {
        let stored = bootstrap(&members());
        let storage = TopologyStorage::new();
        {
            let mut core = storage.wl();
            core.set_conf_state(stored.conf_state);
            core.append(&stored.entries).unwrap();
            core.set_hardstate(stored.hard_state);
        }
        let config = raft::Config {
            id: 1,
            ..raft::Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        RawNode::new(&config, storage, &logger).unwrap()
    }

    fn message(kind: MessageType) -> Message {
        let mut m = Message {
            from: 2,
            to: 1,
            term: 5,
            ..Message::default()
        };
        m.set_msg_type(kind);
        m
    }

    #[test]
    fn messages_raft_rs_would_abort_on_are_not_stepped() {
        let mut node = node();
        let mut beat = message(MessageType::MsgHeartbeat);
        beat.commit = 1;
        assert_eq!(unsteppable(&node, &beat), None);
        beat.commit = 9;
        assert!(unsteppable(&node, &beat).unwrap().contains("log ends at 1"));

        let mut append = message(MessageType::MsgAppend);
        append.entries = vec![Entry {
            index: 1,
            term: 3,
            ..Entry::default()
        }]
        .into();
        assert!(unsteppable(&node, &append).unwrap().contains("contradicts"));
        append.entries[0].term = 1;
        assert_eq!(unsteppable(&node, &append), None);

        let mut ack = message(MessageType::MsgAppendResponse);
        ack.index = 7;
        assert!(unsteppable(&node, &ack).is_some());
        ack.reject = true;
        assert_eq!(unsteppable(&node, &ack), None);

        assert!(unsteppable(&node, &message(MessageType::MsgSnapshot)).is_some());
        let mut snapshot = message(MessageType::MsgSnapshot);
        snapshot.mut_snapshot().data = b"not a topology".to_vec().into();
        snapshot.mut_snapshot().mut_metadata().index = 5;
        assert!(unsteppable(&node, &snapshot)
            .unwrap()
            .contains("does not decode"));
        let topology = Topology::initial(members()).unwrap();
        snapshot.mut_snapshot().data = topology_to_wire(&topology).encode_to_vec().into();
        assert_eq!(unsteppable(&node, &snapshot), None);
        // Stepped, the checked heartbeat would have aborted the process.
        assert!(node.step(message(MessageType::MsgHeartbeat)).is_ok());
    }
}
