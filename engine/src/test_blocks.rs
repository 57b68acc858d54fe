//! Test helper: blocks put straight into an arena, for the unit tests of the parts that link
//! them (LRU, wheel, index, scan).

use crate::arena::Arena;
use crate::block::{self, block_len};
use crate::version::Version;

/// Allocates and encodes a block with this key, an empty value and this deadline (0 = none).
pub(crate) fn insert(arena: &mut Arena, key: &[u8], deadline: u64) -> u32 {
    let len = block_len(key.len(), 0, deadline != 0);
    let at = arena.alloc(len);
    block::encode(arena.slot_mut(at), key, b"", Version::ZERO, deadline, false);
    at
}
