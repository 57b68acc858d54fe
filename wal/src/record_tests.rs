use proptest::prelude::*;

use super::*;

fn put<'a>(key: &'a [u8], value: &'a [u8]) -> Entry<'a> {
    Entry {
        value,
        ..Entry::new(Op::Put, key)
    }
}

#[test]
fn layout_of_a_small_put() {
    let mut out = Vec::new();
    encode(1, &put(b"k", b"v"), &mut out);
    // len 10 | crc32(len ++ payload) | seq=1, op=PUT, key "k", value "v" (zlib.crc32 agrees)
    let want = "0a000000fdc25235080110011a016b220176";
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, want);
    assert_eq!(put(b"k", b"v").encoded_len(1), out.len());
}

#[test]
fn varint_boundaries_encode_as_prost_does() {
    let mut values = vec![u64::MAX];
    for bits in [7, 14, 21, 28, 35, 42, 49, 56, 63] {
        values.extend([(1u64 << bits) - 1, 1u64 << bits]);
    }
    for v in values {
        let entry = Entry {
            expires_at_ms: v,
            version_hlc: v,
            version_node: v as u32,
            synced_below: v,
            ..put(b"k", b"v")
        };
        let mut out = Vec::new();
        encode(v, &entry, &mut out);
        let (got, used) = decode(&out, 1 << 10).unwrap().unwrap();
        assert_eq!((got.entry(), used), (entry, out.len()), "{v:#x}");
        assert!(out.len() <= entry.max_encoded_len(), "{v:#x}");
        let prost_bytes = Proto {
            seq: v,
            op: RecordOp::Put as i32,
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            expires_at_ms: v,
            version_hlc: v,
            version_node: v as u32,
            synced_below: v,
        }
        .encode_to_vec();
        assert_eq!(&out[FRAME_LEN..], &prost_bytes[..], "{v:#x}");
    }
}

#[test]
fn decode_table() {
    let mut good = Vec::new();
    encode(7, &put(b"key", b"value"), &mut good);
    let n = good.len();
    let flip = |i: usize| {
        let mut b = good.clone();
        b[i] ^= 0x40;
        b
    };
    let mut zero_seq = Vec::new();
    encode(0, &put(b"k", b"v"), &mut zero_seq);
    let mut too_long = good.clone();
    too_long[..4].copy_from_slice(&1000u32.to_le_bytes());

    // (bytes, max_len, expected outcome as text)
    let cases: Vec<(Vec<u8>, usize, &str)> = vec![
        (good.clone(), 1024, "ok"),
        ([good.clone(), vec![0xAA; 5]].concat(), 1024, "ok"), // trailing bytes are not read
        (good[..3].to_vec(), 1024, "incomplete"),             // not even a length
        (good[..n - 1].to_vec(), 1024, "incomplete"),
        (vec![0; 16], 1024, "malformed"), // padding is not a record
        (too_long, 100, "too long"),      // checked before the bytes are there
        ([flip(0), vec![0xAA; 100]].concat(), 1024, "checksum"), // the length is covered by the CRC
        (flip(5), 1024, "checksum"),      // the CRC itself
        (flip(n - 1), 1024, "checksum"),  // the payload
        (zero_seq, 1024, "malformed"),
    ];
    for (i, (bytes, max, want)) in cases.into_iter().enumerate() {
        let got = match decode(&bytes, max) {
            Ok(Some((r, used))) => {
                assert_eq!(
                    (r.seq, &r.key[..], &r.value[..], used),
                    (7, &b"key"[..], &b"value"[..], n)
                );
                "ok"
            }
            Ok(None) => "incomplete",
            Err(Error::Malformed(_)) => "malformed",
            Err(Error::RecordTooLong { .. }) => "too long",
            Err(Error::Checksum { .. }) => "checksum",
            Err(e) => panic!("case {i}: unexpected {e}"),
        };
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn an_unknown_op_is_malformed_not_a_panic() {
    let proto = Proto {
        seq: 3,
        op: 99,
        ..Proto::default()
    };
    let payload = proto.encode_to_vec();
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes);
    crc.update(&payload);
    bytes.extend_from_slice(&crc.finalize().to_le_bytes());
    bytes.extend_from_slice(&payload);
    assert!(matches!(decode(&bytes, 1024), Err(Error::Malformed(m)) if m.contains("99")));
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Put),
        Just(Op::Remove),
        Just(Op::Touch),
        Just(Op::Evict),
        Just(Op::Expire),
        Just(Op::Synced),
    ]
}

prop_compose! {
    fn record()(
        seq in 1u64..,
        op in op(),
        key in proptest::collection::vec(any::<u8>(), 0..40),
        value in proptest::collection::vec(any::<u8>(), 0..300),
        expires_at_ms in prop_oneof![Just(0u64), any::<u64>()],
        version_hlc in any::<u64>(),
        version_node in any::<u32>(),
        synced_below in prop_oneof![Just(0u64), any::<u64>()],
    ) -> Record {
        Record { seq, op, key, value, expires_at_ms, version_hlc, version_node, synced_below }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_and_prost_agrees(records in proptest::collection::vec(record(), 1..8)) {
        let mut buf = Vec::new();
        for r in &records {
            let before = buf.len();
            encode(r.seq, &r.entry(), &mut buf);
            // The hand-written encoder produces exactly prost's bytes.
            let prost_bytes = Proto {
                seq: r.seq,
                op: r.op.to_proto() as i32,
                key: r.key.clone(),
                value: r.value.clone(),
                expires_at_ms: r.expires_at_ms,
                version_hlc: r.version_hlc,
                version_node: r.version_node,
                synced_below: r.synced_below,
            }
            .encode_to_vec();
            prop_assert_eq!(&buf[before + FRAME_LEN..], &prost_bytes[..]);
            prop_assert_eq!(buf.len() - before, r.entry().encoded_len(r.seq));
            prop_assert!(buf.len() - before <= r.entry().max_encoded_len());
            // The CRC, hashed in one call over the len staged before the payload, is the CRC
            // of the len field, then the payload.
            let mut crc = crc32fast::Hasher::new();
            crc.update(&buf[before..before + LEN_FIELD]);
            crc.update(&buf[before + FRAME_LEN..]);
            let crc = crc.finalize().to_le_bytes();
            prop_assert_eq!(&buf[before + LEN_FIELD..before + FRAME_LEN], &crc[..]);
            // Into a slice of exactly its length, over stale bytes: the same bytes.
            let mut exact = vec![0xA5; buf.len() - before];
            prop_assert_eq!(encode_into(r.seq, &r.entry(), &mut exact), exact.len());
            prop_assert_eq!(&exact[..], &buf[before..]);
        }
        let mut pos = 0;
        for r in &records {
            let (got, used) = decode(&buf[pos..], 1 << 20).unwrap().unwrap();
            prop_assert_eq!(&got, r);
            pos += used;
        }
        prop_assert_eq!(pos, buf.len());
    }

    #[test]
    fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&bytes, 1 << 20);
    }

    #[test]
    fn a_flipped_bit_never_decodes_to_another_record(r in record(), bit in any::<usize>()) {
        let mut buf = Vec::new();
        encode(r.seq, &r.entry(), &mut buf);
        let bit = bit % (buf.len() * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        if let Ok(Some((got, _))) = decode(&buf, 1 << 20) {
            prop_assert!(false, "decoded {:?} from damaged bytes", got);
        }
    }
}
