//! The arena: where every entry's block lives, named by a 32-bit address that the hash index,
//! the LRU list and the timer wheel use instead of pointers.
//!
//! Memory comes in pages of 64 KiB, laid out in one reserved range that the kernel may back
//! with huge pages (pages.rs, region.rs). A block of up to [`SMALL_MAX`] bytes gets a slot in
//! a page of its size class (classes every 8 bytes from 24 to 1024), with no header and at
//! most 7 bytes of rounding; glibc malloc would add an 8-byte header and round to 16 (a
//! 134-byte block costs 136 bytes here, 144 from malloc). Freed slots go on their class's free list
//! (doubly linked through the slots' LRU links) and are reused first. A class page whose last
//! block is freed is kept for any class to reuse first (zeroed then), unless it is the page
//! its class is filling, so memory left behind by entries of one size serves entries of
//! another.
//!
//! A larger block gets an allocation of its own, of exactly its length, from the global
//! allocator, named in a table of its own; a freed large block's table slot is reused.
//!
//! Addresses: below `LARGE_BASE` (2^31), `page << 13 | offset / 8`, 13 bits for the offset
//! inside a 64 KiB page, so at most 2^18 class pages (16 GiB) per store; from `LARGE_BASE`,
//! `LARGE_BASE + n` for the large block in table slot `n`, up to `MAX_ADDR`, so at most
//! 2^31 − 2^16 large blocks. Addresses from `MAX_ADDR` up are left to the timer wheel's bucket
//! tags and to `NIL`. Addresses follow the walk's order: class pages, then large blocks.

use crate::block::{Block, BlockMut, NIL};
use crate::charge;
use crate::pages::Pages;

const PAGE_BITS: u32 = 16;
/// Bytes in a class page.
pub(crate) const PAGE: usize = 1 << PAGE_BITS;
const OFFSET_BITS: u32 = PAGE_BITS - 3;
const OFFSET_MASK: u32 = (1 << OFFSET_BITS) - 1;
/// First address of a large block.
const LARGE_BASE: u32 = 1 << 31;
/// Class pages an arena may have.
const MAX_PAGES: u32 = LARGE_BASE >> OFFSET_BITS;
/// First address the arena never hands out; addresses from here up are reserved (wheel.rs).
pub(crate) const MAX_ADDR: u32 = 0xFFFF_0000;
/// Large blocks an arena may hold.
const MAX_LARGE: u32 = MAX_ADDR - LARGE_BASE;
/// Longest block that gets a class slot; longer ones get an allocation of their own.
pub(crate) const SMALL_MAX: usize = 1024;
/// The smallest block (20-byte header, two 1-byte lengths, 1-byte key) rounded to 8.
const MIN_SLOT: usize = 24;
const CLASSES: usize = (SMALL_MAX - MIN_SLOT) / 8 + 1;
/// Kind of a page no class holds.
const FREE_PAGE: u8 = 0xFF;
/// What one large-block table slot costs: a boxed slice.
pub(crate) const LARGE_ENTRY_BYTES: u64 = 16;

const _: () = assert!(CLASSES < FREE_PAGE as usize);

/// Bytes of the slot that holds a block of `len` bytes: its size class, or `len` itself for a
/// large block.
pub(crate) fn slot_len(len: usize) -> usize {
    if len <= SMALL_MAX {
        len.max(MIN_SLOT).next_multiple_of(8)
    } else {
        len
    }
}

/// True when a block of `len` bytes fits the slot of one of `slot` bytes without moving.
pub(crate) fn fits_in_place(len: usize, slot: usize) -> bool {
    slot_len(len) == slot
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

/// The large-block table slot of `addr`, if it names one.
fn large_slot(addr: u32) -> Option<usize> {
    addr.checked_sub(LARGE_BASE).map(|n| n as usize)
}

#[derive(Clone, Copy)]
struct Class {
    /// First free slot (its `lru_next` links the rest, `lru_prev` back), or NIL.
    free: u32,
    /// The page being filled, or NIL.
    page: u32,
    /// Offset of the first never-used slot in `page`.
    bump: usize,
}

pub(crate) struct Arena {
    pages: Pages,
    /// Per page: its class number or `FREE_PAGE`.
    kinds: Vec<u8>,
    /// Per page: blocks in use in it.
    used: Vec<u16>,
    classes: [Class; CLASSES],
    free_pages: Vec<u32>,
    page_limit: u32,
    large: Vec<Box<[u8]>>,
    free_large: Vec<u32>,
    large_limit: u32,
    /// What the pages and large blocks hold (see `resident_bytes`).
    resident: u64,
    /// Classes that have a page they are filling.
    filling: u32,
}

impl Arena {
    pub(crate) fn new() -> Arena {
        Arena::with_limits(MAX_PAGES, MAX_LARGE)
    }

    /// An arena of at most `pages` class pages and `large` large blocks (tests use small ones).
    pub(crate) fn with_limits(pages: u32, large: u32) -> Arena {
        Arena {
            pages: Pages::new(pages.min(MAX_PAGES) as usize),
            kinds: Vec::new(),
            used: Vec::new(),
            classes: [Class {
                free: NIL,
                page: NIL,
                bump: 0,
            }; CLASSES],
            free_pages: Vec::new(),
            page_limit: pages.min(MAX_PAGES),
            large: Vec::new(),
            free_large: Vec::new(),
            large_limit: large.min(MAX_LARGE),
            resident: 0,
            filling: 0,
        }
    }

    /// The most bytes of class pages, and the most large blocks, this arena may hold (for
    /// `Error::TooManyEntries`).
    pub(crate) fn limits(&self) -> (u64, u64) {
        (
            u64::from(self.page_limit) * PAGE as u64,
            u64::from(self.large_limit),
        )
    }

    /// Bytes held for blocks: 64 KiB per class page a class holds, and each large block as
    /// glibc malloc takes it plus its table slot. The page table, the large block table and
    /// the pages no class holds (kept for reuse, see the module docs) are not counted.
    pub(crate) fn resident_bytes(&self) -> u64 {
        self.resident
    }

    /// Bytes `alloc(len)` would add to `resident_bytes`: 0 when a slot of the class is free
    /// or its current page has room.
    pub(crate) fn growth_for(&self, len: usize) -> u64 {
        if len > SMALL_MAX {
            return charge::arena_block(len);
        }
        let class = &self.classes[class_of(len)];
        if class.free != NIL || (class.page != NIL && class.bump + slot_len(len) <= PAGE) {
            0
        } else {
            PAGE as u64
        }
    }

    /// 64 KiB for each class that has a page it is filling: what `resident_bytes` may exceed
    /// `max_memory` by (see `Store::make_slot`).
    pub(crate) fn first_pages_bytes(&self) -> u64 {
        u64::from(self.filling) * PAGE as u64
    }

    /// True when the class of a block of `len` bytes has a page (so a new page for it is
    /// beyond the one page each class may always have); false for large blocks.
    pub(crate) fn class_has_page(&self, len: usize) -> bool {
        len <= SMALL_MAX && self.classes[class_of(len)].page != NIL
    }

    /// True when `alloc(len)` will succeed.
    pub(crate) fn has_room(&self, len: usize) -> bool {
        if len > SMALL_MAX {
            return !self.free_large.is_empty() || self.large.len() < self.large_limit as usize;
        }
        self.growth_for(len) == 0
            || !self.free_pages.is_empty()
            || self.pages.len() < self.page_limit as usize
    }

    /// A page of zeros for `class`: one no class holds, or a new one.
    fn new_page(&mut self, class: u8) -> usize {
        self.resident += PAGE as u64;
        if let Some(page) = self.free_pages.pop() {
            let page = page as usize;
            // A scan tells free slots by their zero first byte (block.rs).
            self.pages.get_mut(page).fill(0);
            self.kinds[page] = class;
            return page;
        }
        assert!(
            self.pages.len() < self.page_limit as usize,
            "invariant: callers check has_room before alloc"
        );
        self.kinds.push(class);
        self.used.push(0);
        self.pages.push()
    }

    /// A slot of `slot_len(len)` bytes for a block of `len` bytes (check `has_room` first).
    /// Its contents are unspecified until the caller encodes a block into it.
    pub(crate) fn alloc(&mut self, len: usize) -> u32 {
        if len > SMALL_MAX {
            return self.alloc_large(len);
        }
        let c = class_of(len);
        let size = slot_len(len);
        let class = self.classes[c];
        let at = if class.free != NIL {
            self.unlink_free(c, class.free);
            class.free
        } else {
            if class.page == NIL || class.bump + size > PAGE {
                self.filling += u32::from(class.page == NIL);
                let page = self.new_page(c as u8);
                self.classes[c].page = page as u32;
                self.classes[c].bump = 0;
            }
            let class = &mut self.classes[c];
            let at = addr(class.page as usize, class.bump);
            class.bump += size;
            at
        };
        self.used[split(at).0] += 1;
        at
    }

    fn alloc_large(&mut self, len: usize) -> u32 {
        let bytes = vec![0u8; len].into_boxed_slice();
        self.resident += charge::arena_block(len);
        let n = match self.free_large.pop() {
            Some(n) => {
                self.large[n as usize] = bytes;
                n
            }
            None => {
                assert!(
                    self.large.len() < self.large_limit as usize,
                    "invariant: callers check has_room before alloc"
                );
                self.large.push(bytes);
                (self.large.len() - 1) as u32
            }
        };
        LARGE_BASE + n
    }

    /// Gives back the slot at `addr`; the block in it is gone. A class page left with no block
    /// in use is given up by its class, unless the class is filling it.
    pub(crate) fn free(&mut self, at: u32) {
        if let Some(n) = large_slot(at) {
            let bytes = std::mem::take(&mut self.large[n]);
            self.resident -= charge::arena_block(bytes.len());
            self.free_large.push(n as u32);
            return;
        }
        let (page, offset) = split(at);
        let c = self.kinds[page] as usize;
        let head = self.classes[c].free;
        let mut block = BlockMut(&mut self.pages.get_mut(page)[offset..]);
        block.set_free();
        block.set_lru_prev(NIL);
        block.set_lru_next(head);
        if head != NIL {
            self.block_mut(head).set_lru_prev(at);
        }
        self.classes[c].free = at;
        self.used[page] -= 1;
        if self.used[page] == 0 && self.classes[c].page as usize != page {
            self.release_page(page, PAGE - class_len(c as u8) + 1);
        }
    }

    /// Hands back the pages that classes are filling but hold no block in use, so that
    /// another class may have them; returns whether there was one. O(classes + their slots).
    pub(crate) fn release_idle_pages(&mut self) -> bool {
        let mut released = false;
        for c in 0..CLASSES {
            let class = self.classes[c];
            if class.page != NIL && self.used[class.page as usize] == 0 {
                self.classes[c].page = NIL;
                self.classes[c].bump = 0;
                self.filling -= 1;
                self.release_page(class.page as usize, class.bump);
                released = true;
            }
        }
        released
    }

    /// Takes free slot `at` off its class's free list.
    fn unlink_free(&mut self, class: usize, at: u32) {
        let block = self.block(at);
        let (prev, next) = (block.lru_prev(), block.lru_next());
        if prev == NIL {
            self.classes[class].free = next;
        } else {
            self.block_mut(prev).set_lru_next(next);
        }
        if next != NIL {
            self.block_mut(next).set_lru_prev(prev);
        }
    }

    /// Takes a class page with no block in use, and not being filled, from its class: its
    /// slots at offsets below `end` (all it ever handed out) are on the free list, so they
    /// come off it first. O(slots in a page).
    fn release_page(&mut self, page: usize, end: usize) {
        let class = self.kinds[page];
        let len = class_len(class);
        for offset in (0..end).step_by(len) {
            self.unlink_free(class as usize, addr(page, offset));
        }
        self.kinds[page] = FREE_PAGE;
        self.free_pages.push(page as u32);
        self.resident -= PAGE as u64;
    }

    /// Bytes of the slot at `addr`.
    pub(crate) fn slot_len_at(&self, at: u32) -> usize {
        match large_slot(at) {
            Some(n) => self.large[n].len(),
            None => class_len(self.kinds[split(at).0]),
        }
    }

    /// The slot at `addr`, to encode a block into (at least the slot's length).
    #[inline]
    pub(crate) fn slot_mut(&mut self, at: u32) -> &mut [u8] {
        if let Some(n) = large_slot(at) {
            return &mut self.large[n];
        }
        let (page, offset) = split(at);
        &mut self.pages.get_mut(page)[offset..]
    }

    #[inline]
    fn slot(&self, at: u32) -> &[u8] {
        if let Some(n) = large_slot(at) {
            return &self.large[n];
        }
        let (page, offset) = split(at);
        &self.pages.get(page)[offset..]
    }

    /// The block at `addr`, which is in use.
    #[inline]
    pub(crate) fn block(&self, at: u32) -> Block<'_> {
        Block(self.slot(at))
    }

    /// The block at `addr` if `addr` names the start of a slot, in use, of this arena as it is
    /// now; `None` for any other address (one noted before its slot was freed, say).
    pub(crate) fn used_block_at(&self, at: u32) -> Option<Block<'_>> {
        let start = match large_slot(at) {
            Some(n) => self.large.get(n).is_some_and(|b| !b.is_empty()),
            None => {
                let (page, offset) = split(at);
                match self.kinds.get(page) {
                    None | Some(&FREE_PAGE) => false,
                    Some(&class) => {
                        let c = &self.classes[class as usize];
                        let len = class_len(class);
                        offset % len == 0
                            && offset + len <= PAGE
                            && (c.page as usize != page || offset < c.bump)
                    }
                }
            }
        };
        let block = start.then(|| self.block(at))?;
        block.in_use().then_some(block)
    }

    #[inline]
    pub(crate) fn block_mut(&mut self, at: u32) -> BlockMut<'_> {
        BlockMut(self.slot_mut(at))
    }

    /// Copies the first `n` bytes of the slot at `from` to the slot at `to` (distinct slots).
    pub(crate) fn copy(&mut self, from: u32, to: u32, n: usize) {
        match (large_slot(from), large_slot(to)) {
            (None, None) => {
                let ((fp, fo), (tp, to_)) = (split(from), split(to));
                if fp == tp {
                    self.pages.get_mut(fp).copy_within(fo..fo + n, to_);
                } else {
                    let (src, dst) = self.pages.pair(fp, tp);
                    dst[to_..to_ + n].copy_from_slice(&src[fo..fo + n]);
                }
            }
            (Some(f), Some(t)) => {
                let (src, dst) = pair(&mut self.large, f, t);
                dst[..n].copy_from_slice(&src[..n]);
            }
            (Some(f), None) => {
                let (tp, to_) = split(to);
                self.pages.get_mut(tp)[to_..to_ + n].copy_from_slice(&self.large[f][..n]);
            }
            (None, Some(t)) => {
                let (fp, fo) = split(from);
                self.large[t][..n].copy_from_slice(&self.pages.get(fp)[fo..fo + n]);
            }
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
        let mut budget = max_slots;
        if from < LARGE_BASE {
            let (mut page, mut offset) = split(from);
            while page < self.pages.len() {
                let (bytes, kind) = (self.pages.get(page), self.kinds[page]);
                // Slots start at offsets below `end`, `step` apart: every class length for a
                // class page, up to where its class stopped filling it; one for a free page.
                let (step, end) = match kind {
                    FREE_PAGE => (1, 1),
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
                // A cursor into a page that has since gone to another class goes on from
                // that class's next slot.
                offset = offset.next_multiple_of(step);
                while offset < end {
                    if budget == 0 {
                        return Some(addr(page, offset));
                    }
                    budget -= 1;
                    if kind != FREE_PAGE {
                        let block = Block(&bytes[offset..]);
                        if block.in_use() {
                            visit(block);
                        }
                    }
                    offset += step;
                }
                page += 1;
                offset = 0;
            }
        }
        let mut n = large_slot(from).unwrap_or(0);
        while n < self.large.len() {
            if budget == 0 {
                return Some(LARGE_BASE + n as u32);
            }
            budget -= 1;
            let bytes = &self.large[n];
            if !bytes.is_empty() {
                visit(Block(bytes));
            }
            n += 1;
        }
        None
    }
}

/// `v[from]` to read and `v[to]` to write, `from != to`.
fn pair(v: &mut [Box<[u8]>], from: usize, to: usize) -> (&[u8], &mut [u8]) {
    if from < to {
        let (low, high) = v.split_at_mut(to);
        (&low[from], &mut high[0])
    } else {
        let (low, high) = v.split_at_mut(from);
        (&high[0], &mut low[to])
    }
}

#[cfg(test)]
#[path = "arena_tests.rs"]
mod tests;
