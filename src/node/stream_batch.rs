//! The stream's batches: what the scan keeps of each entry, how entries group into batches
//! that fit a frame, and how a batch's answers sort into done, resend and refused. Pure.

use kvmesh_engine::Version;
use kvmesh_proto::wire::{Op, OpResult, Status};

use super::{BATCH_BYTES, BATCH_OPS, FRAME_MARGIN};

/// What an op adds to its key and value once encoded, at most (tags, lengths, TTL, version).
pub const OP_OVERHEAD: usize = 64;

/// One entry as the scan saw it: its key, its version and its key + value bytes then. Its op
/// is built from the store only when its batch goes (see [`Sender::fresh`]).
#[derive(Clone, Debug)]
pub struct Item {
    pub key: Vec<u8>,
    pub version: Version,
    pub len: usize,
}

/// Entries for one destination shard, their key + value bytes, and their encoded size at most.
#[derive(Default)]
pub struct Batch {
    pub items: Vec<Item>,
    pub bytes: usize,
    pub encoded: usize,
}

impl Batch {
    /// Adds `item`; returns the batches ready to go: this one first when `item` would take it
    /// past `budget` encoded bytes, then the one holding `item` once it is full.
    pub fn push(&mut self, item: Item, budget: usize) -> Vec<Batch> {
        let mut ready = Vec::new();
        let encoded = item.len + OP_OVERHEAD;
        if !self.items.is_empty() && self.encoded + encoded > budget {
            ready.push(std::mem::take(self));
        }
        self.bytes += item.len;
        self.encoded += encoded;
        self.items.push(item);
        if self.encoded >= budget || self.items.len() >= BATCH_OPS {
            ready.push(std::mem::take(self));
        }
        ready
    }
}

/// The encoded bytes a batch may take: [`BATCH_BYTES`], or less to fit `max_frame`.
pub fn batch_budget(max_frame: usize) -> usize {
    BATCH_BYTES
        .min(max_frame.saturating_sub(FRAME_MARGIN))
        .max(1)
}

/// The encoded size of `ops` in a request, exactly (the request's own fields aside).
pub fn encoded_len(ops: &[Op]) -> usize {
    use prost::Message;
    ops.iter()
        .map(|op| {
            let len = op.encoded_len();
            1 + prost::encoding::encoded_len_varint(len as u64) + len
        })
        .sum()
}

/// A batch's answers, sorted.
#[derive(Debug, Default)]
pub struct Answers {
    /// Copies acknowledged, and their key + value bytes.
    pub acked: u64,
    pub acked_bytes: u64,
    /// Ops refused for good: a limit of the destination that a resend cannot change.
    pub refused: u64,
    /// Positions in the batch of the ops to resend: failed for now, or not answered.
    pub retry: Vec<usize>,
}

/// Sorts a batch's ops by their answers.
pub fn sort_answers(ops: &[Op], results: &[OpResult]) -> Answers {
    let mut answers = Answers::default();
    for (i, op) in ops.iter().enumerate() {
        match results.get(i).map(OpResult::status) {
            Some(Status::Ok) => {
                answers.acked += 1;
                answers.acked_bytes += payload(std::slice::from_ref(op));
            }
            // The change is over on the destination, or the key is not its own: a copy sent
            // now would be an orphan nobody drops.
            Some(Status::StaleStream) => {
                answers.refused += 1;
                tracing::debug!(
                    "stream: a destination refused key {:?}: {}",
                    String::from_utf8_lossy(&op.key[..op.key.len().min(64)]),
                    results[i].message
                );
            }
            Some(Status::InvalidArgument | Status::NoSpace | Status::UnknownOperation) => {
                answers.refused += 1;
                tracing::warn!(
                    "stream: a destination refused key {:?} for good: {}",
                    String::from_utf8_lossy(&op.key[..op.key.len().min(64)]),
                    results[i].message
                );
            }
            _ => answers.retry.push(i),
        }
    }
    answers
}

/// The items at positions `at` (ascending) of `items`.
pub fn pick(items: Vec<Item>, at: &[usize]) -> Vec<Item> {
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| at.binary_search(i).is_ok())
        .map(|(_, item)| item)
        .collect()
}

/// Key + value bytes of `ops`.
pub fn payload(ops: &[Op]) -> u64 {
    ops.iter()
        .map(|o| (o.key.len() + o.value.len()) as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_proto::wire::OpCode;

    fn put(key: &str, value_len: usize) -> Op {
        Op {
            replica: true,
            version_hlc: 7,
            version_node: 1,
            ..kvmesh_net::client::op(OpCode::OpPut, key.as_bytes(), &vec![b'v'; value_len], 0)
        }
    }

    fn item(key: &[u8], value_len: usize) -> Item {
        Item {
            key: key.to_vec(),
            version: Version::new(7, 1),
            len: key.len() + value_len,
        }
    }

    fn answered(status: Status) -> OpResult {
        OpResult {
            status: status as i32,
            ..OpResult::default()
        }
    }

    #[test]
    fn answers_split_into_done_resend_and_refused() {
        let ops = vec![
            put("a", 1),
            put("b", 1),
            put("c", 1),
            put("d", 1),
            put("e", 1),
        ];
        let results = [
            answered(Status::Ok),
            answered(Status::Unavailable),
            answered(Status::NoSpace),
            answered(Status::Timeout),
        ];
        // "e" got no answer at all: resent too.
        let answers = sort_answers(&ops, &results);
        assert_eq!(answers.retry, [1, 3, 4]);
        assert_eq!(
            (answers.acked, answers.acked_bytes, answers.refused),
            (1, 2, 1)
        );
        let items: Vec<Item> = ops.iter().map(|o| item(&o.key, 1)).collect();
        let keys: Vec<Vec<u8>> = pick(items, &answers.retry)
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(keys, [b"b".to_vec(), b"d".to_vec(), b"e".to_vec()]);
    }

    #[test]
    fn batches_end_at_their_byte_or_op_budget() {
        let sizes = |ready: Vec<Batch>| -> Vec<(usize, usize)> {
            ready.iter().map(|b| (b.items.len(), b.bytes)).collect()
        };
        let budget = batch_budget(17 << 20);
        assert_eq!(budget, BATCH_BYTES);
        let (full, mut b) = (BATCH_BYTES - 2 * OP_OVERHEAD, Batch::default());
        assert_eq!(sizes(b.push(item(b"k", full - 3), budget)), []);
        assert_eq!(sizes(b.push(item(b"k", 1), budget)), [(2, full)]);
        // An entry above the budget goes alone, after what was waiting.
        assert_eq!(sizes(b.push(item(b"a", 10), budget)), []);
        assert_eq!(
            sizes(b.push(item(b"b", 2 * BATCH_BYTES), budget)),
            [(1, 11), (1, 2 * BATCH_BYTES + 1)]
        );
        assert!(b.items.is_empty());
        for i in 0..BATCH_OPS - 1 {
            assert_eq!(sizes(b.push(item(i.to_string().as_bytes(), 0), budget)), []);
        }
        assert_eq!(b.push(item(b"last", 0), budget).len(), 1);
        // A small --max-frame caps the batch below BATCH_BYTES.
        let small = batch_budget(64 << 10);
        assert_eq!(small, (64 << 10) - FRAME_MARGIN);
        let ready = (0..100).flat_map(|i| b.push(item(i.to_string().as_bytes(), 1000), small));
        assert!(ready.into_iter().all(|batch| batch.encoded <= small));
    }

    #[test]
    fn the_encoded_length_bounds_the_estimate() {
        let ops: Vec<Op> = (0..10).map(|i| put(&i.to_string(), 1000)).collect();
        let estimate: usize = ops
            .iter()
            .map(|o| o.key.len() + o.value.len() + OP_OVERHEAD)
            .sum();
        assert!(encoded_len(&ops) <= estimate);
        let request = kvmesh_proto::wire::Request {
            ops: ops.clone(),
            ..Default::default()
        };
        assert_eq!(prost::Message::encoded_len(&request), encoded_len(&ops));
    }
}
