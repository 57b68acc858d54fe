//! The arena's class pages, numbered from 0, carved 32 at a time out of 2 MiB chunks (see
//! chunk.rs for why). A page is handed out zeroed; one given back reads as zeros again, its
//! memory returned to the kernel until it is reused.

use crate::arena::PAGE;
use crate::chunk::{Chunk, CHUNK};

const PER_CHUNK: usize = CHUNK / PAGE;

#[derive(Default)]
pub(crate) struct Pages {
    chunks: Vec<Chunk>,
    /// Pages numbered so far; the last chunk may have more room.
    len: usize,
}

impl Pages {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Numbers one more page, of zeros.
    pub(crate) fn push(&mut self) -> usize {
        if self.len == self.chunks.len() * PER_CHUNK {
            self.chunks.push(Chunk::new());
        }
        self.len += 1;
        self.len - 1
    }

    pub(crate) fn get(&self, page: usize) -> &[u8] {
        let (chunk, at) = place(page);
        &self.chunks[chunk].bytes()[at..at + PAGE]
    }

    pub(crate) fn get_mut(&mut self, page: usize) -> &mut [u8] {
        let (chunk, at) = place(page);
        &mut self.chunks[chunk].bytes_mut()[at..at + PAGE]
    }

    /// Zeroes `page` by giving its memory back to the kernel; it keeps its number.
    pub(crate) fn discard(&mut self, page: usize) {
        let (chunk, at) = place(page);
        self.chunks[chunk].discard(at, PAGE);
    }

    /// Page `from` to read and page `to` to write, `from != to`.
    pub(crate) fn pair(&mut self, from: usize, to: usize) -> (&[u8], &mut [u8]) {
        let ((fc, fa), (tc, ta)) = (place(from), place(to));
        if fc == tc {
            let bytes = self.chunks[fc].bytes_mut();
            if fa < ta {
                let (low, high) = bytes.split_at_mut(ta);
                (&low[fa..fa + PAGE], &mut high[..PAGE])
            } else {
                let (low, high) = bytes.split_at_mut(fa);
                (&high[..PAGE], &mut low[ta..ta + PAGE])
            }
        } else if fc < tc {
            let (low, high) = self.chunks.split_at_mut(tc);
            (
                &low[fc].bytes()[fa..fa + PAGE],
                &mut high[0].bytes_mut()[ta..ta + PAGE],
            )
        } else {
            let (low, high) = self.chunks.split_at_mut(fc);
            (
                &high[0].bytes()[fa..fa + PAGE],
                &mut low[tc].bytes_mut()[ta..ta + PAGE],
            )
        }
    }
}

/// The chunk of `page` and the page's offset in it.
fn place(page: usize) -> (usize, usize) {
    (page / PER_CHUNK, page % PER_CHUNK * PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_span_chunks_and_pairs_reach_the_right_bytes() {
        let mut pages = Pages::default();
        for n in 0..PER_CHUNK + 2 {
            assert_eq!(pages.push(), n);
            pages.get_mut(n)[0] = n as u8;
            pages.get_mut(n)[PAGE - 1] = n as u8;
        }
        assert_eq!(pages.len(), PER_CHUNK + 2);
        for (from, to) in [(1, 3), (3, 1), (2, PER_CHUNK + 1), (PER_CHUNK, 0)] {
            let (src, dst) = pages.pair(from, to);
            assert_eq!((src[0], src[PAGE - 1]), (from as u8, from as u8));
            assert_eq!((dst[0], dst[PAGE - 1]), (to as u8, to as u8));
        }
        pages.discard(PER_CHUNK);
        assert!(pages.get(PER_CHUNK).iter().all(|&b| b == 0));
        assert_eq!(pages.get(PER_CHUNK + 1)[0], (PER_CHUNK + 1) as u8);
    }
}
