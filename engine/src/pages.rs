//! The arena's class pages, numbered from 0, laid out in order in one [`Region`] that opens a
//! 2 MiB chunk (32 pages) at a time (see region.rs for why). A new page reads as zeros.

use crate::arena::PAGE;
use crate::region::{Region, CHUNK};

pub(crate) struct Pages {
    /// Reserved at the first page, for `limit` pages.
    region: Option<Region>,
    limit: usize,
    /// Pages numbered so far; the last chunk opened may have room for more.
    len: usize,
}

impl Pages {
    /// Room for at most `limit` pages; no address space is reserved until the first.
    pub(crate) fn new(limit: usize) -> Pages {
        Pages {
            region: None,
            limit,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Numbers one more page, of zeros (callers keep within `limit`).
    pub(crate) fn push(&mut self) -> usize {
        let limit = self.limit;
        let region = self.region.get_or_insert_with(|| Region::new(limit * PAGE));
        if (self.len + 1) * PAGE > region.bytes().len() {
            region.open_chunk();
        }
        self.len += 1;
        self.len - 1
    }

    pub(crate) fn get(&self, page: usize) -> &[u8] {
        debug_assert!(page < self.len, "page {page} of {}", self.len);
        let bytes = self.region.as_ref().map_or(&[][..], Region::bytes);
        &bytes[page * PAGE..(page + 1) * PAGE]
    }

    pub(crate) fn get_mut(&mut self, page: usize) -> &mut [u8] {
        debug_assert!(page < self.len, "page {page} of {}", self.len);
        let bytes = self.region.as_mut().map_or(&mut [][..], Region::bytes_mut);
        &mut bytes[page * PAGE..(page + 1) * PAGE]
    }

    /// Page `from` to read and page `to` to write, `from != to`.
    pub(crate) fn pair(&mut self, from: usize, to: usize) -> (&[u8], &mut [u8]) {
        let bytes = self.region.as_mut().map_or(&mut [][..], Region::bytes_mut);
        let (f, t) = (from * PAGE, to * PAGE);
        if f < t {
            let (low, high) = bytes.split_at_mut(t);
            (&low[f..f + PAGE], &mut high[..PAGE])
        } else {
            let (low, high) = bytes.split_at_mut(f);
            (&high[..PAGE], &mut low[t..t + PAGE])
        }
    }
}

const _: () = assert!(CHUNK % PAGE == 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_span_chunks_and_pairs_reach_the_right_bytes() {
        let per_chunk = CHUNK / PAGE;
        let mut pages = Pages::new(per_chunk + 2);
        for n in 0..per_chunk + 2 {
            assert_eq!(pages.push(), n);
            assert!(pages.get(n).iter().all(|&b| b == 0));
            pages.get_mut(n)[0] = n as u8;
            pages.get_mut(n)[PAGE - 1] = n as u8;
        }
        assert_eq!(pages.len(), per_chunk + 2);
        for (from, to) in [(1, 3), (3, 1), (2, per_chunk + 1), (per_chunk, 0)] {
            let (src, dst) = pages.pair(from, to);
            assert_eq!((src[0], src[PAGE - 1]), (from as u8, from as u8));
            assert_eq!((dst[0], dst[PAGE - 1]), (to as u8, to as u8));
        }
    }
}
