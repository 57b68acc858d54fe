//! Recovery on real files (glommio `DmaFile`, O_DIRECT): torn tails at every offset, flipped
//! bytes, missing and foreign segments. Each case must give the documented behaviour and never
//! panic.

mod support;

use std::path::Path;

use kvmesh_wal::dma::DmaDir;
use kvmesh_wal::testing::MemDir;
use kvmesh_wal::{Config, Error, Fsync, Recovery};
use support::*;

const BLOCK: u64 = 4096;

/// 64 KiB segments on disk.
fn config() -> Config {
    small(BLOCK, 16)
}

/// A shard directory holding puts `0..n`, each in its own commit, closed cleanly. Returns the
/// name and byte range of every put record in the last segment.
fn write_log(path: &Path, config: &Config, n: u64) {
    let config = config.clone();
    let path = path.to_path_buf();
    run(async move {
        let (log, _, _) = open(DmaDir::create_all(&path).await.unwrap(), &config)
            .await
            .unwrap();
        put_each(&log, 0, n).await;
        log.close().await.unwrap();
    });
}

fn segments(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

/// Offsets of the records of a segment file, from a scan.
fn record_offsets(bytes: &[u8]) -> Vec<(u64, u64, kvmesh_wal::Record)> {
    kvmesh_wal::scan::scan(bytes, BLOCK as usize, 1 << 20)
        .items
        .into_iter()
        .filter_map(|i| match i {
            kvmesh_wal::scan::Item::Record { offset, record } => {
                let len = record.entry().encoded_len(record.seq) as u64;
                Some((offset, len, record))
            }
            kvmesh_wal::scan::Item::Damage(_) => None,
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The last segment that holds records (the one after it, if any, is the unused spare).
fn last_with_records(path: &Path) -> (String, Vec<(u64, u64, kvmesh_wal::Record)>) {
    segments(path)
        .into_iter()
        .rev()
        .map(|name| {
            let bytes = std::fs::read(path.join(&name)).unwrap();
            (name, record_offsets(&bytes))
        })
        .find(|(_, recs)| !recs.is_empty())
        .unwrap()
}

#[test]
fn truncating_the_last_segment_at_every_offset_of_its_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let config = config();
    // 74 puts: the last one, k73, has a short value, so its record is small.
    write_log(&pristine, &config, 74);
    let (name, records) = last_with_records(&pristine);
    // The last put (a sync marker may follow it; cut inside the put itself).
    let (off, len, last) = records
        .iter()
        .rev()
        .find(|(_, _, r)| r.op == kvmesh_wal::Op::Put)
        .cloned()
        .unwrap();
    assert_eq!(last.key, b"k73");
    let tmp_path = tmp.path().to_path_buf();
    run(async move {
        for cut in off..=off + len {
            for preallocated in [false, true] {
                let case = tmp_path.join(format!("cut-{cut}-{preallocated}"));
                copy_dir(&pristine, &case);
                let file = case.join(&name);
                if preallocated {
                    // A torn write into a preallocated segment: zeros from the cut on.
                    let mut bytes = std::fs::read(&file).unwrap();
                    bytes[cut as usize..].fill(0);
                    std::fs::write(&file, bytes).unwrap();
                } else {
                    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                    f.set_len(cut).unwrap();
                }
                let (log, report, replayed) =
                    open(DmaDir::create_all(&case).await.unwrap(), &config)
                        .await
                        .unwrap();
                let want = if cut == off + len { 74 } else { 73 };
                assert_eq!(
                    puts(&replayed),
                    expected_puts(0, want),
                    "cut at {cut}: {report}"
                );
                match (&report.torn_tail, cut == off || cut == off + len) {
                    (None, true) => {}
                    (Some(torn), false) => {
                        assert_eq!(torn.offset, off, "cut at {cut}: {report}");
                        assert!(torn.file.ends_with(&name), "{report}");
                        assert!(
                            report.to_string().contains("torn tail truncated"),
                            "{report}"
                        );
                    }
                    (torn, _) => panic!("cut at {cut}: torn tail {torn:?}: {report}"),
                }
                // The log continues cleanly after the cut, and the next start is clean.
                put_each(&log, 100, 102).await;
                log.close().await.unwrap();
                drop(log);
                let (_, again, replayed) = open(DmaDir::create_all(&case).await.unwrap(), &config)
                    .await
                    .unwrap();
                assert!(
                    again.torn_tail.is_none() && again.skipped.is_empty(),
                    "{again}"
                );
                let mut want_all = expected_puts(0, want);
                want_all.extend(expected_puts(100, 102));
                assert_eq!(puts(&replayed), want_all, "cut at {cut}");
                std::fs::remove_dir_all(&case).unwrap();
            }
        }
    });
}

/// Flips one byte inside put `k{victim}` of a log of `n` puts; returns (file, offset).
fn flip_in_put(path: &Path, victim: u64) -> (String, u64) {
    for name in segments(path) {
        let file = path.join(&name);
        let mut bytes = std::fs::read(&file).unwrap();
        for (off, len, r) in record_offsets(&bytes) {
            if r.key == format!("k{victim}").as_bytes() {
                bytes[(off + len - 3) as usize] ^= 0x10;
                std::fs::write(&file, bytes).unwrap();
                return (name, off);
            }
        }
    }
    panic!("put k{victim} not found");
}

#[test]
fn a_flipped_byte_in_a_middle_record_stops_start_up_naming_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config();
    write_log(tmp.path(), &config, 40);
    let (name, offset) = flip_in_put(tmp.path(), 20);
    let path = tmp.path().to_path_buf();
    let name2 = name.clone();
    run(async move {
        let name = name2;
        let err = open(DmaDir::create_all(&path).await.unwrap(), &config)
            .await
            .err()
            .expect("start-up must stop");
        match &err {
            Error::Corruption {
                file, offset: at, ..
            } => {
                assert!(file.ends_with(&name), "{err}");
                assert_eq!(*at, offset, "{err}");
            }
            other => panic!("expected corruption, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&name) && text.contains(&format!("offset {offset}")),
            "{text}"
        );
        assert!(text.contains("--recovery tolerate-corruption"), "{text}");
    });
    // Nothing was changed on disk by the refusal.
    let bytes = std::fs::read(tmp.path().join(&name)).unwrap();
    assert!(record_offsets(&bytes)
        .iter()
        .all(|(_, _, r)| r.key != b"k20"));
}

#[test]
fn tolerate_corruption_skips_exactly_the_damaged_record_and_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        recovery: Recovery::TolerateCorruption,
        ..config()
    };
    write_log(tmp.path(), &config, 40);
    let (name, offset) = flip_in_put(tmp.path(), 20);
    let path = tmp.path().to_path_buf();
    run(async move {
        let (log, report, replayed) = open(DmaDir::create_all(&path).await.unwrap(), &config)
            .await
            .unwrap();
        let mut want = expected_puts(0, 20);
        want.extend(expected_puts(21, 40));
        assert_eq!(puts(&replayed), want, "{report}");
        assert_eq!(report.skipped.len(), 1, "{report}");
        let loss = &report.skipped[0];
        assert!(
            loss.file.ends_with(&name) && loss.offset == offset,
            "{report}"
        );
        assert_eq!(
            Some(loss.first_seq),
            loss.last_seq,
            "exactly one record: {report}"
        );
        assert!(report.to_string().contains("1 record(s) lost"), "{report}");
        // Writing goes on after the damage.
        put_each(&log, 50, 52).await;
        log.close().await.unwrap();
    });
}

#[test]
fn with_fsync_never_damage_no_sync_covers_is_a_torn_tail() {
    // Nothing states that these records were synced, so damage among them is what a power
    // loss can leave: truncated there, and the readable records after it dropped, reported.
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        fsync: Fsync::Never,
        segment_size: 1 << 20,
        ..config()
    };
    write_log(tmp.path(), &config, 40);
    flip_in_put(tmp.path(), 30);
    let path = tmp.path().to_path_buf();
    run(async move {
        let (_, report, replayed) = open(DmaDir::create_all(&path).await.unwrap(), &config)
            .await
            .unwrap();
        assert_eq!(puts(&replayed), expected_puts(0, 30), "{report}");
        let torn = report.torn_tail.as_ref().expect("torn tail");
        assert_eq!(torn.dropped_after, 9, "{report}");
    });
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config();
    write_log(tmp.path(), &config, 120);
    let names = segments(tmp.path());
    assert!(names.len() >= 4, "{names:?}");
    std::fs::remove_file(tmp.path().join(&names[1])).unwrap();
    let path = tmp.path().to_path_buf();
    run(async move {
        let err = open(DmaDir::create_all(&path).await.unwrap(), &config)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
    });
}

#[test]
fn a_damaged_header_in_the_middle_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config();
    write_log(tmp.path(), &config, 120);
    let names = segments(tmp.path());
    let file = tmp.path().join(&names[1]);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[3] ^= 0xFF;
    std::fs::write(&file, bytes).unwrap();
    let path = tmp.path().to_path_buf();
    run(async move {
        let err = open(DmaDir::create_all(&path).await.unwrap(), &config)
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains(&names[1]) && text.contains("magic"), "{text}");
    });
}

#[test]
fn a_segment_of_another_shard_is_refused() {
    run(async {
        let dir = MemDir::new(512);
        let config = small(512, 16);
        let (log, _) = kvmesh_wal::open(dir.clone(), 3, config.clone(), |_| {})
            .await
            .unwrap();
        log.close().await.unwrap();
        drop(log);
        let err = kvmesh_wal::open(dir, 4, config, |_| {})
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("belongs to shard 3"), "{err}");
    });
}

#[test]
fn other_files_are_ignored_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config();
    write_log(tmp.path(), &config, 3);
    std::fs::write(tmp.path().join("notes.txt"), b"hello").unwrap();
    let path = tmp.path().to_path_buf();
    run(async move {
        let (_, report, replayed) = open(DmaDir::create_all(&path).await.unwrap(), &config)
            .await
            .unwrap();
        assert_eq!(puts(&replayed), expected_puts(0, 3));
        assert!(report.to_string().contains("notes.txt"), "{report}");
    });
}
