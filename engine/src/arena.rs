//! The arena: where every entry's block lives, named by a 32-bit address that the hash index,
//! the LRU list and the timer wheel use instead of pointers.
//!
//! Memory comes in pages of 64 KiB. A block of up to [`SMALL_MAX`] bytes gets a slot in a page
//! of its size class (classes every 8 bytes from 24 to 1024), with no header and at most 7
//! bytes of rounding; glibc malloc would add an 8-byte header and round to 16 (a 134-byte
//! block costs 136 bytes here, 144 from malloc). A larger block gets a page of its own, of
//! exactly its length, from the global allocator. Freed slots go on their class's free list
//! (threaded through the slot's `lru_next`) and are reused first; a freed large page's table
//! slot is reused too. Class pages are kept once allocated, as memcached keeps its slabs: a
//! class that shrinks keeps its free slots for later entries of that size.
//!
//! An address is `page << 13 | offset / 8`: 13 bits for the offset inside a 64 KiB page, the
//! rest for the page. Addresses at and above `MAX_PAGES << 13` are left to the timer wheel's
//! bucket tags and to `NIL`, so at most 32 GiB of blocks are addressable per store.

use crate::block::{Block, BlockMut, NIL};

const PAGE_BITS: u32 = 16;
/// Bytes in a class page.
const PAGE: usize = 1 << PAGE_BITS;
const OFFSET_BITS: u32 = PAGE_BITS - 3;
const OFFSET_MASK: u32 = (1 << OFFSET_BITS) - 1;
/// Pages an arena may have; addresses from `MAX_PAGES << 13` up are reserved (see wheel.rs).
pub(crate) const MAX_PAGES: u32 = 0xFFFF_0000 >> OFFSET_BITS;
/// First address the arena never hands out.
pub(crate) const MAX_ADDR: u32 = MAX_PAGES << OFFSET_BITS;
/// Longest block that gets a class slot; longer ones get a page of their own.
pub(crate) const SMALL_MAX: usize = 1024;
/// The smallest block (20-byte header, two 1-byte lengths, 1-byte key) rounded to 8.
const MIN_SLOT: usize = 24;
const CLASSES: usize = (SMALL_MAX - MIN_SLOT) / 8 + 1;
/// Page kinds beyond the class numbers.
const LARGE: u8 = 0xFE;
const FREE_PAGE: u8 = 0xFF;
/// What one page-table slot costs: a boxed slice (16 bytes) and its kind byte.
pub(crate) const PAGE_ENTRY_BYTES: u64 = 17;

const _: () = assert!(CLASSES < LARGE as usize);

/// Bytes of the slot that holds a block of `len` bytes: its size class, or `len` itself for a
/// large block.
pub(crate) fn slot_len(len: usize) -> usize {
    if len <= SMALL_MAX {
        len.max(MIN_SLOT).next_multiple_of(8)
    } else {
        len
    }
}

fn class_of(len: usize) -> usize {
    (slot_len(len) - MIN_SLOT) / 8
}

fn class_len(class: u8) -> usize {
    MIN_SLOT + 8 * class as usize
}

fn addr(page: usize, offset: usize) -> u32 {
    (page as u32) << OFFSET_BITS | (offset >> 3) as u32
}

fn split(addr: u32) -> (usize, usize) {
    (
        (addr >> OFFSET_BITS) as usize,
        ((addr & OFFSET_MASK) << 3) as usize,
    )
}

#[derive(Clone, Copy)]
struct Class {
    /// First free slot (its `lru_next` links the rest), or NIL.
    free: u32,
    /// The page being filled, or NIL before the first.
    page: u32,
    /// Offset of the first never-used slot in `page`.
    bump: usize,
}

pub(crate) struct Arena {
    pages: Vec<Box<[u8]>>,
    /// Per page: its class number, `LARGE` or `FREE_PAGE`.
    kinds: Vec<u8>,
    classes: [Class; CLASSES],
    free_pages: Vec<u32>,
    page_limit: u32,
}

impl Arena {
    pub(crate) fn new() -> Arena {
        Arena::with_page_limit(MAX_PAGES)
    }

    pub(crate) fn with_page_limit(limit: u32) -> Arena {
        Arena {
            pages: Vec::new(),
            kinds: Vec::new(),
            classes: [Class {
                free: NIL,
                page: NIL,
                bump: 0,
            }; CLASSES],
            free_pages: Vec::new(),
            page_limit: limit.min(MAX_PAGES),
        }
    }

    /// The most bytes of class pages this arena may hold (for `Error::TooManyEntries`).
    pub(crate) fn limit_bytes(&self) -> u64 {
        u64::from(self.page_limit) * PAGE as u64
    }

    fn page_available(&self) -> bool {
        !self.free_pages.is_empty() || self.pages.len() < self.page_limit as usize
    }

    /// True when `alloc(len)` will succeed.
    pub(crate) fn has_room(&self, len: usize) -> bool {
        if len > SMALL_MAX {
            return self.page_available();
        }
        let class = &self.classes[class_of(len)];
        class.free != NIL
            || (class.page != NIL && class.bump + slot_len(len) <= PAGE)
            || self.page_available()
    }

    fn new_page(&mut self, kind: u8, len: usize) -> usize {
        let bytes = vec![0u8; len].into_boxed_slice();
        if let Some(page) = self.free_pages.pop() {
            self.pages[page as usize] = bytes;
            self.kinds[page as usize] = kind;
            return page as usize;
        }
        assert!(
            self.pages.len() < self.page_limit as usize,
            "invariant: callers check has_room before alloc"
        );
        self.pages.push(bytes);
        self.kinds.push(kind);
        self.pages.len() - 1
    }

    /// A slot of `slot_len(len)` bytes for a block of `len` bytes (check `has_room` first).
    /// Its contents are unspecified until the caller encodes a block into it.
    pub(crate) fn alloc(&mut self, len: usize) -> u32 {
        if len > SMALL_MAX {
            return addr(self.new_page(LARGE, len), 0);
        }
        let c = class_of(len);
        let size = slot_len(len);
        let class = self.classes[c];
        if class.free != NIL {
            self.classes[c].free = self.block(class.free).lru_next();
            return class.free;
        }
        if class.page == NIL || class.bump + size > PAGE {
            let page = self.new_page(c as u8, PAGE);
            self.classes[c].page = page as u32;
            self.classes[c].bump = 0;
        }
        let class = &mut self.classes[c];
        let at = addr(class.page as usize, class.bump);
        class.bump += size;
        at
    }

    /// Gives back the slot at `addr`; the block in it is gone.
    pub(crate) fn free(&mut self, at: u32) {
        let (page, offset) = split(at);
        let kind = self.kinds[page];
        if kind == LARGE {
            self.pages[page] = Box::default();
            self.kinds[page] = FREE_PAGE;
            self.free_pages.push(page as u32);
            return;
        }
        let class = &mut self.classes[kind as usize];
        let next = class.free;
        class.free = at;
        let mut block = BlockMut(&mut self.pages[page][offset..]);
        block.set_free();
        block.set_lru_next(next);
    }

    /// Bytes of the slot at `addr`.
    pub(crate) fn slot_len_at(&self, at: u32) -> usize {
        let page = split(at).0;
        match self.kinds[page] {
            LARGE => self.pages[page].len(),
            class => class_len(class),
        }
    }

    /// The slot at `addr`, to encode a block into (at least the slot's length).
    pub(crate) fn slot_mut(&mut self, at: u32) -> &mut [u8] {
        let (page, offset) = split(at);
        &mut self.pages[page][offset..]
    }

    /// The block at `addr`, which is in use.
    pub(crate) fn block(&self, at: u32) -> Block<'_> {
        let (page, offset) = split(at);
        Block(&self.pages[page][offset..])
    }

    /// The block at `addr` if `addr` names the start of a slot, in use, of this arena as it is
    /// now; `None` for any other address (one noted before its slot was freed, say).
    pub(crate) fn used_block_at(&self, at: u32) -> Option<Block<'_>> {
        let (page, offset) = split(at);
        let start = match *self.kinds.get(page)? {
            FREE_PAGE => false,
            LARGE => offset == 0,
            class => {
                let c = &self.classes[class as usize];
                let len = class_len(class);
                offset % len == 0
                    && offset + len <= PAGE
                    && (c.page as usize != page || offset < c.bump)
            }
        };
        let block = Block(&self.pages[page][offset..]);
        (start && block.in_use()).then_some(block)
    }

    pub(crate) fn block_mut(&mut self, at: u32) -> BlockMut<'_> {
        BlockMut(self.slot_mut(at))
    }

    /// Copies the first `n` bytes of the slot at `from` to the slot at `to` (distinct slots).
    pub(crate) fn copy(&mut self, from: u32, to: u32, n: usize) {
        let ((fp, fo), (tp, to_)) = (split(from), split(to));
        if fp == tp {
            self.pages[fp].copy_within(fo..fo + n, to_);
        } else if fp < tp {
            let (low, high) = self.pages.split_at_mut(tp);
            high[0][to_..to_ + n].copy_from_slice(&low[fp][fo..fo + n]);
        } else {
            let (low, high) = self.pages.split_at_mut(fp);
            low[tp][to_..to_ + n].copy_from_slice(&high[0][fo..fo + n]);
        }
    }

    /// Visits the slots from address `from` on, in address order, calling `visit` for each
    /// block in use, until `max_slots` slots (used or not) have been looked at. Returns the
    /// address to go on from, or `None` once every slot has been looked at.
    pub(crate) fn walk(
        &self,
        from: u32,
        max_slots: usize,
        mut visit: impl FnMut(Block<'_>),
    ) -> Option<u32> {
        let (mut page, mut offset) = split(from);
        let mut budget = max_slots;
        while page < self.pages.len() {
            let (bytes, kind) = (&self.pages[page], self.kinds[page]);
            // Slots start at offsets below `end`, `step` apart: one at 0 for a large or free
            // page, every class length for a class page, up to where its class stopped
            // filling it.
            let (step, end) = match kind {
                LARGE | FREE_PAGE => (1, 1),
                class => {
                    let c = self.classes[class as usize];
                    let filled = if c.page as usize == page {
                        c.bump
                    } else {
                        PAGE - class_len(class) + 1
                    };
                    (class_len(class), filled)
                }
            };
            while offset < end {
                if budget == 0 {
                    return Some(addr(page, offset));
                }
                budget -= 1;
                let block = Block(&bytes[offset..]);
                if kind != FREE_PAGE && block.in_use() {
                    visit(block);
                }
                offset += step;
            }
            page += 1;
            offset = 0;
        }
        None
    }
}

#[cfg(test)]
#[path = "arena_tests.rs"]
mod tests;
