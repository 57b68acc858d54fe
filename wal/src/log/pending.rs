//! The pending batch: records encoded straight into the aligned buffers their commit writes
//! will be issued from, so a record's bytes are written once, by the encoder, and not copied
//! again before they reach the disk.
//!
//! Appends fill an open buffer; a full one is sealed (its tail zeroed to the block boundary)
//! and a new one opened. The writer takes every buffer at once, so appends made while its
//! write is in flight fill buffers of their own: no buffer is changed after the writer took
//! it. The buffers come from glommio's I/O memory (`allocate_dma_buffer`), so this runs on
//! the log's executor.

use glommio::io::DmaBuffer;

use crate::record::{self, Entry};

/// Bytes of an open buffer when `max_write` allows it: a batch of small records rarely needs
/// more, and a larger batch only takes more buffers (more writes).
const CAPACITY: usize = 256 << 10;

/// One sealed buffer of records, ready to write.
pub(super) struct Sealed {
    /// The records, then zeros to the block boundary; its length is a multiple of the block.
    pub buf: DmaBuffer,
    /// Bytes of records at its front.
    pub len: usize,
    /// How many records.
    pub records: u64,
}

/// The buffer being filled.
struct Open {
    buf: DmaBuffer,
    len: usize,
    records: u64,
}

/// The records appended and not yet taken by the writer, in order.
pub(super) struct Pending {
    sealed: Vec<Sealed>,
    open: Option<Open>,
    /// Sealed buffers are padded to a multiple of this (the active segment's block).
    block: usize,
    /// Bytes of a new open buffer, a multiple of `block` (larger for a larger record).
    capacity: usize,
    max_write: usize,
}

impl Pending {
    /// No records, buffers padded to `block` bytes, none of them (but for a single larger
    /// record) holding more than `max_write` bytes.
    pub fn new(block: u64, max_write: usize) -> Pending {
        let mut pending = Pending {
            sealed: Vec::new(),
            open: None,
            block: 0,
            capacity: 0,
            max_write,
        };
        pending.set_block(block);
        pending
    }

    /// True when no record is pending.
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.open.is_none()
    }

    /// Buffers sealed from now on are padded to `block` (a rotation changed the segment); the
    /// open one, sized for the old block, is sealed first, padded to that.
    pub fn set_block(&mut self, block: u64) {
        self.seal();
        self.block = block as usize;
        self.capacity = (CAPACITY.min(self.max_write) / self.block).max(1) * self.block;
    }

    /// Encodes record `seq` holding `entry` after the pending ones.
    pub fn push(&mut self, seq: u64, entry: &Entry<'_>) {
        let bound = entry.max_encoded_len();
        let room = self.open.as_ref().map_or(0, |o| o.buf.len() - o.len);
        // The bound first: the exact length is only needed when the bound does not fit.
        let need = if bound <= room {
            bound
        } else {
            entry.encoded_len(seq)
        };
        if need > room {
            self.seal();
            let size = self.capacity.max(need.div_ceil(self.block) * self.block);
            self.open = Some(Open {
                buf: glommio::allocate_dma_buffer(size),
                len: 0,
                records: 0,
            });
        }
        if let Some(open) = &mut self.open {
            open.len += record::encode_into(seq, entry, &mut open.buf.as_bytes_mut()[open.len..]);
            open.records += 1;
        }
    }

    /// Moves every pending record, in sealed buffers, oldest first, to the end of `into`;
    /// nothing is pending afterwards. Neither vector gives up its capacity.
    pub fn take_into(&mut self, into: &mut Vec<Sealed>) {
        self.seal();
        into.append(&mut self.sealed);
    }

    /// Seals the open buffer, if any: zeros to the block boundary, trimmed there.
    fn seal(&mut self) {
        let Some(Open {
            mut buf,
            len,
            records,
        }) = self.open.take()
        else {
            return;
        };
        let padded = len.div_ceil(self.block) * self.block;
        // An open buffer's size is a multiple of the block it was opened under, which is
        // `self.block`: `set_block` seals before it changes.
        debug_assert!(padded <= buf.len());
        buf.as_bytes_mut()[len..padded].fill(0);
        buf.trim_to_size(padded);
        self.sealed.push(Sealed { buf, len, records });
    }
}
