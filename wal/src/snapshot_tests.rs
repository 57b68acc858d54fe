use proptest::prelude::*;

use super::*;

type Owned = (Vec<u8>, Vec<u8>, u64, u64, u32);

fn owned(e: &Entry<'_>) -> Owned {
    (
        e.key.to_vec(),
        e.value.to_vec(),
        e.expires_at_ms,
        e.version_hlc,
        e.version_node,
    )
}

/// A snapshot of `entries`, `per_chunk` entries a chunk, zero-padded to `pad` bytes.
fn build(header: &Header, entries: &[Owned], per_chunk: usize, pad: usize) -> Vec<u8> {
    let mut out = encode_header(header).to_vec();
    let mut chunk = Chunk::default();
    let mut chunks = 0;
    for group in entries.chunks(per_chunk.max(1)) {
        for (k, v, d, h, n) in group {
            chunk.push(&Entry {
                key: k,
                value: v,
                expires_at_ms: *d,
                version_hlc: *h,
                version_node: *n,
            });
        }
        chunk.seal(&mut out);
        chunks += 1;
    }
    out.extend_from_slice(&encode_trailer(chunks, entries.len() as u64));
    out.resize(out.len().div_ceil(pad) * pad, 0);
    out
}

fn sample(n: usize) -> Vec<Owned> {
    (0..n)
        .map(|i| {
            (
                format!("key-{i}").into_bytes(),
                vec![i as u8; i % 7],
                if i % 3 == 0 {
                    1_700_000_000_000 + i as u64
                } else {
                    0
                },
                100 + i as u64,
                7,
            )
        })
        .collect()
}

const H: Header = Header {
    shard: 2,
    shards: 3,
    covered_seq: 0x42,
    entries_hint: 5,
};

fn read_all(bytes: &[u8], tolerate: bool) -> Result<(Summary, Vec<Owned>), Damage> {
    let mut got = Vec::new();
    read(bytes, tolerate, |e| got.push(owned(e)))
        .map(|s| (s, got))
        .map_err(|(d, _)| d)
}

#[test]
fn header_layout() {
    let bytes = encode_header(&H);
    let hex: String = bytes[..32].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "4b564d455348534e\
         01000000\
         02000000\
         03000000\
         05000000\
         4200000000000000"
    );
    assert_eq!(&bytes[32..], &crc32fast::hash(&bytes[..32]).to_le_bytes());
    assert_eq!(decode_header(&bytes).unwrap(), H);
}

#[test]
fn chunk_and_trailer_layout() {
    let mut chunk = Chunk::default();
    chunk.push(&Entry {
        key: b"k",
        value: b"vv",
        expires_at_ms: 5,
        version_hlc: 6,
        version_node: 7,
    });
    let mut out = Vec::new();
    assert_eq!(chunk.seal(&mut out), 1);
    assert!(chunk.is_empty());
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    let crc = {
        let mut h = crc32fast::Hasher::new();
        h.update(&out[..12]);
        h.update(&out[16..]);
        h.finalize()
    };
    let crc: String = crc
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let want = format!(
        "534e434b 1f000000 01000000 {crc} \
         01000000 02000000 0500000000000000 0600000000000000 07000000 6b 7676"
    );
    assert_eq!(hex, want.replace(' ', ""));
    let t = encode_trailer(3, 9);
    assert_eq!(
        &t[..16],
        b"SNND\x03\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00"
    );
}

#[test]
fn header_table() {
    let good = encode_header(&H);
    let with = |i: usize, v: u8| {
        let mut b = good;
        b[i] = v;
        b.to_vec()
    };
    let mut v2 = good;
    v2[8] = 2;
    let crc = crc32fast::hash(&v2[..32]);
    v2[32..].copy_from_slice(&crc.to_le_bytes());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..20].to_vec(), "shorter than a snapshot header"),
        (with(0, b'X'), "magic"),
        (with(25, 9), "checksum"),
        (v2.to_vec(), "version 2"),
        (vec![0; 64], "magic"),
    ];
    for (bytes, want) in cases {
        let e = decode_header(&bytes).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn round_trip_with_padding_and_empty() {
    for n in [0, 1, 10, 100] {
        let entries = sample(n);
        let bytes = build(&H, &entries, 16, 512);
        assert_eq!(bytes.len() % 512, 0);
        let (summary, got) = read_all(&bytes, false).unwrap();
        assert_eq!(got, entries);
        assert_eq!(summary.header, H);
        assert_eq!(summary.trailer, Some((n.div_ceil(16) as u32, n as u64)));
        assert_eq!(summary.lost_entries(), Some(0));
    }
}

#[test]
fn cut_short_anywhere_is_an_error_and_tolerated_as_a_loss() {
    let entries = sample(40);
    let full = build(&H, &entries, 10, 1);
    for cut in HEADER_LEN..full.len() {
        let mut bytes = full[..cut].to_vec();
        bytes.resize(full.len().div_ceil(512) * 512, 0);
        let d = read_all(&bytes, false).unwrap_err();
        assert!(d.offset <= cut as u64, "cut {cut}: {d:?}");
        let (summary, got) = read_all(&bytes, true).unwrap();
        assert_eq!(got, entries[..got.len()], "cut {cut}: a prefix");
        assert!(!summary.damage.is_empty(), "cut {cut}");
        assert_eq!(summary.trailer, None, "cut {cut}");
    }
}

#[test]
fn a_flipped_byte_in_a_middle_chunk() {
    let entries = sample(30);
    let full = build(&H, &entries, 10, 512);
    // The second chunk: after the header and the first chunk.
    let first_len = {
        let mut c = Chunk::default();
        let mut out = Vec::new();
        for (k, v, d, h, n) in &entries[..10] {
            c.push(&Entry {
                key: k,
                value: v,
                expires_at_ms: *d,
                version_hlc: *h,
                version_node: *n,
            });
        }
        c.seal(&mut out);
        out.len()
    };
    let second = HEADER_LEN + first_len;
    for at in [second, second + 5, second + CHUNK_FRAME + 3, second + 60] {
        let mut bytes = full.clone();
        bytes[at] ^= 0x40;
        let d = read_all(&bytes, false).unwrap_err();
        assert_eq!(d.offset, second as u64, "flip at {at}: {d:?}");
        let (summary, got) = read_all(&bytes, true).unwrap();
        let mut want = entries[..10].to_vec();
        want.extend_from_slice(&entries[20..]);
        assert_eq!(got, want, "flip at {at}");
        assert_eq!(summary.lost_entries(), Some(10), "flip at {at}");
        assert_eq!(summary.damage.len(), 1);
        assert_eq!(summary.damage[0].offset, second as u64);
    }
}

#[test]
fn trailer_must_match_and_end_the_data() {
    let entries = sample(5);
    let mut bytes = encode_header(&H).to_vec();
    let mut c = Chunk::default();
    for (k, v, d, h, n) in &entries {
        c.push(&Entry {
            key: k,
            value: v,
            expires_at_ms: *d,
            version_hlc: *h,
            version_node: *n,
        });
    }
    c.seal(&mut bytes);
    let mut wrong = bytes.clone();
    wrong.extend_from_slice(&encode_trailer(1, 6));
    let d = read_all(&wrong, false).unwrap_err();
    assert!(d.why.contains("counts 1 chunks and 6 entries"), "{d:?}");
    let mut after = bytes.clone();
    after.extend_from_slice(&encode_trailer(1, 5));
    after.extend_from_slice(b"junk");
    let d = read_all(&after, false).unwrap_err();
    assert!(d.why.contains("after the trailer"), "{d:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prop_round_trip(
        entries in proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 1..40),
                proptest::collection::vec(any::<u8>(), 0..200),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
            ),
            0..60,
        ),
        per_chunk in 1usize..20,
        covered in any::<u64>(),
    ) {
        let header = Header { shard: 1, shards: 4, covered_seq: covered, entries_hint: 0 };
        let bytes = build(&header, &entries, per_chunk, 4096);
        let (summary, got) = read_all(&bytes, false).unwrap();
        prop_assert_eq!(summary.header, header);
        prop_assert_eq!(got, entries);
    }

    #[test]
    fn prop_any_flipped_byte_is_found(seed in any::<u64>()) {
        let entries = sample(25);
        let full = build(&H, &entries, 6, 1);
        let at = (seed % full.len() as u64) as usize;
        let mut bytes = full.clone();
        bytes[at] ^= 1 << (seed % 8);
        // Strict reading fails; tolerant reading never panics and never returns a changed entry.
        prop_assert!(read_all(&bytes, false).is_err());
        if let Ok((_, got)) = read_all(&bytes, true) {
            for e in got {
                prop_assert!(entries.contains(&e));
            }
        }
    }
}
