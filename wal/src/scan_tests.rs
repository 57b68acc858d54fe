use super::*;
use crate::record::{Entry, Op};

const BLOCK: usize = 512;
const MAX: usize = 1 << 20;

/// A segment image built commit by commit, as the writer lays it out.
struct Image {
    bytes: Vec<u8>,
    next_seq: u64,
    /// (offset, len) of every record written.
    records: Vec<(usize, usize)>,
}

impl Image {
    fn new() -> Image {
        Image {
            bytes: vec![0xEE; BLOCK], // header stand-in: the scanner starts at `block`
            next_seq: 1,
            records: Vec::new(),
        }
    }

    fn commit(&mut self, values: &[&str]) -> &mut Self {
        for v in values {
            let start = self.bytes.len();
            let entry = Entry {
                value: v.as_bytes(),
                ..Entry::new(Op::Put, b"key")
            };
            record::encode(self.next_seq, &entry, &mut self.bytes);
            self.records.push((start, self.bytes.len() - start));
            self.next_seq += 1;
        }
        self.bytes.resize(align_up(self.bytes.len(), BLOCK), 0);
        self
    }

    /// Preallocated: zeros up to `len`.
    fn padded(&self, len: usize) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b.resize(len, 0);
        b
    }
}

fn seqs(scan: &Scan) -> Vec<u64> {
    scan.items
        .iter()
        .filter_map(|i| match i {
            Item::Record { record, .. } => Some(record.seq),
            Item::Damage(_) => None,
        })
        .collect()
}

fn damages(scan: &Scan) -> Vec<&Damage> {
    scan.items
        .iter()
        .filter_map(|i| match i {
            Item::Damage(d) => Some(d),
            Item::Record { .. } => None,
        })
        .collect()
}

#[test]
fn clean_segments() {
    let mut img = Image::new();
    img.commit(&["a", "b"])
        .commit(&["c"])
        .commit(&[&"x".repeat(1500)]);
    for bytes in [img.bytes.clone(), img.padded(16 * BLOCK)] {
        let s = scan(&bytes, BLOCK, MAX);
        assert_eq!(seqs(&s), vec![1, 2, 3, 4]);
        assert!(damages(&s).is_empty());
        let (off, len) = img.records[3];
        assert_eq!(s.end_of_records(), Some((off + len) as u64));
        assert_eq!(s.end_of_data, (off + len) as u64);
    }
    // Commits start on fresh blocks.
    assert_eq!(img.records[2].0, 2 * BLOCK);
    assert_eq!(img.records[3].0, 3 * BLOCK);
}

/// A commit that ends 0 to 5 bytes before its block's end: its padding may be shorter than a
/// record's length field, and the next commit, on the next block, is still read.
#[test]
fn a_commit_ending_within_a_length_field_of_its_block_end_is_read_with_the_next() {
    for short in 0..=5 {
        let value = (1..BLOCK)
            .map(|n| "v".repeat(n))
            .find(|v| {
                let mut probe = Vec::new();
                let entry = Entry {
                    value: v.as_bytes(),
                    ..Entry::new(Op::Put, b"key")
                };
                record::encode(1, &entry, &mut probe);
                probe.len() == BLOCK - short
            })
            .expect("a value of that size");
        let mut img = Image::new();
        img.commit(&[&value]).commit(&["next", "and more"]);
        let (off, len) = img.records[0];
        assert_eq!(off + len, 2 * BLOCK - short);
        for bytes in [img.bytes.clone(), img.padded(8 * BLOCK)] {
            let s = scan(&bytes, BLOCK, MAX);
            assert_eq!(seqs(&s), vec![1, 2, 3], "{short} bytes short");
            assert!(
                damages(&s).is_empty(),
                "{short} bytes short: {:?}",
                damages(&s)
            );
        }
        // Garbage in such short padding is still damage, and the next commit is still read.
        if short > 0 {
            let mut bytes = img.bytes.clone();
            bytes[2 * BLOCK - 1] = 0x5A;
            let s = scan(&bytes, BLOCK, MAX);
            assert_eq!(seqs(&s), vec![1, 2, 3], "{short} bytes short, garbage");
            assert_eq!(damages(&s).len(), 1, "{short} bytes short, garbage");
        }
    }
}

#[test]
fn header_only_is_empty() {
    let s = scan(&Image::new().padded(8 * BLOCK), BLOCK, MAX);
    assert!(s.items.is_empty());
    assert_eq!(s.end_of_records(), None);
}

#[test]
fn a_torn_last_record_is_damage_at_its_offset_for_every_cut() {
    let mut img = Image::new();
    img.commit(&["one", "two"])
        .commit(&["three", &"4".repeat(700)]);
    let (off, len) = *img.records.last().unwrap();
    for cut in off..=off + len {
        // Preallocated file: the bytes after the cut are the zeros of preallocation.
        let mut bytes = img.padded(8 * BLOCK);
        bytes[cut..].fill(0);
        let s = scan(&bytes, BLOCK, MAX);
        if cut == off || cut == off + len {
            let want: Vec<u64> = if cut == off {
                vec![1, 2, 3]
            } else {
                vec![1, 2, 3, 4]
            };
            assert_eq!(seqs(&s), want, "cut at {cut}");
            assert!(damages(&s).is_empty(), "cut at {cut}");
        } else {
            assert_eq!(seqs(&s), vec![1, 2, 3], "cut at {cut}");
            let d = damages(&s);
            assert_eq!(d.len(), 1, "cut at {cut}: {d:?}");
            assert_eq!(d[0].offset, off as u64, "cut at {cut}");
            assert_eq!(d[0].end, s.end_of_data, "cut at {cut}: {d:?} {off} {len}");
        }
        // A file that ends at the cut (not preallocated) reads the same.
        let short = scan(&bytes[..cut], BLOCK, MAX);
        assert_eq!(seqs(&short), seqs(&s), "short file cut at {cut}");
    }
}

#[test]
fn a_flipped_byte_in_a_middle_record_loses_that_record_only() {
    let mut img = Image::new();
    img.commit(&["aaaa", "bbbb", "cccc"]).commit(&["dddd"]);
    let (off, len) = img.records[1];
    for i in [off + 4, off + 9, off + len - 1] {
        let mut bytes = img.padded(8 * BLOCK);
        bytes[i] ^= 0x01;
        let s = scan(&bytes, BLOCK, MAX);
        assert_eq!(seqs(&s), vec![1, 3, 4], "byte {i}");
        let d = damages(&s);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].offset, d[0].end), (off as u64, (off + len) as u64));
        assert!(d[0].why.contains("checksum"), "{}", d[0].why);
    }
}

#[test]
fn a_damaged_last_record_of_a_commit_loses_only_it() {
    let mut img = Image::new();
    img.commit(&["aaaa", "bbbb"]).commit(&["cccc"]);
    let (off, len) = img.records[1];
    let mut bytes = img.padded(8 * BLOCK);
    bytes[off + len - 1] ^= 0x80;
    let s = scan(&bytes, BLOCK, MAX);
    assert_eq!(seqs(&s), vec![1, 3]);
    assert_eq!(damages(&s)[0].end, (off + len) as u64);
}

#[test]
fn a_damaged_length_resyncs_at_the_next_commit() {
    let mut img = Image::new();
    img.commit(&["aaaa", "bbbb", "cccc"]).commit(&["dddd"]);
    let (off, _) = img.records[0];
    let mut bytes = img.padded(8 * BLOCK);
    bytes[off + 2] = 0x7F; // length now ~8 MiB: above the limit
    let s = scan(&bytes, BLOCK, MAX);
    assert_eq!(seqs(&s), vec![4]);
    let d = damages(&s);
    assert_eq!(
        (d[0].offset, d[0].end),
        (off as u64, img.records[3].0 as u64)
    );
}

#[test]
fn a_hole_before_later_commits_is_damage() {
    let mut img = Image::new();
    img.commit(&["aaaa"])
        .commit(&[&"b".repeat(900)])
        .commit(&["cccc"]);
    let (off, len) = img.records[1];
    let mut bytes = img.padded(8 * BLOCK);
    bytes[off..off + len].fill(0);
    let s = scan(&bytes, BLOCK, MAX);
    assert_eq!(seqs(&s), vec![1, 3]);
    let d = damages(&s);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].offset, d[0].end),
        (off as u64, img.records[2].0 as u64)
    );
    assert!(d[0].why.contains("zero bytes"), "{}", d[0].why);
}

#[test]
fn garbage_in_padding_is_damage() {
    let mut img = Image::new();
    img.commit(&["aaaa"]).commit(&["bbbb"]);
    let (off, len) = img.records[0];
    let mut bytes = img.padded(8 * BLOCK);
    bytes[off + len + 10] = 1;
    let s = scan(&bytes, BLOCK, MAX);
    assert_eq!(seqs(&s), vec![1, 2]);
    assert!(damages(&s)[0].why.contains("padding"));
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x1234_5678_u64;
    for round in 0..200 {
        let mut img = Image::new();
        img.commit(&["aaaa", "bbbb"]).commit(&["cccc"]);
        let mut bytes = img.padded(4 * BLOCK);
        for _ in 0..(round % 7 + 1) {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let i = (seed >> 33) as usize % bytes.len();
            bytes[i] = (seed >> 20) as u8;
        }
        let s = scan(&bytes, BLOCK, MAX);
        assert!(s.items.len() <= 8);
    }
}

#[test]
fn end_of_data_matches_the_plain_definition() {
    let naive = |b: &[u8]| b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    for len in [0usize, 1, 63, 64, 65, 4095, 4096, 4097, 10_000] {
        let zeros = vec![0u8; len];
        assert_eq!(end_of_data(&zeros), 0);
        assert!(is_zero(&zeros));
        for at in [0, len / 3, len.saturating_sub(1)] {
            if at >= len {
                continue;
            }
            let mut b = zeros.clone();
            b[at] = 7;
            assert_eq!(end_of_data(&b), naive(&b), "len {len} at {at}");
            assert!(!is_zero(&b));
        }
    }
}
