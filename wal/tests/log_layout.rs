//! How the log lays records out, on the in-memory directory: rotation across segments, batches
//! of several commit buffers, block sizes that change between runs, and the largest record.

mod support;

use kvmesh_wal::record::FRAME_LEN;
use kvmesh_wal::testing::MemDir;
use kvmesh_wal::Error;
use support::*;

const BLOCK: u64 = 512;

#[test]
fn segments_rotate_and_replay_across_them() {
    run(async {
        let dir = MemDir::new(BLOCK);
        let config = small(BLOCK, 8); // 4 KiB segments: a few records each
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        put_each(&log, 0, 200).await;
        assert!(log.stats().segments > 20, "{:?}", log.stats());
        log.close().await.unwrap();
        drop(log);
        let names = dir.names();
        let want: Vec<String> = (1..=names.len() as u64)
            .map(kvmesh_wal::segment::name)
            .collect();
        assert_eq!(names, want, "consecutive segment names, one spare at most");
        let (_, report, replayed) = open(dir.clone(), &config).await.unwrap();
        assert_eq!(puts(&replayed), expected_puts(0, 200));
        // An unused, prepared spare (if the close left one) is not counted.
        assert!(report.segments + 1 >= names.len(), "{report}");
    });
}

#[test]
fn a_batch_that_fills_several_commit_buffers_replays_in_order() {
    run(async {
        let dir = MemDir::new(BLOCK);
        let config = small(BLOCK, 64); // commit buffers of max_write = 4 blocks
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        // Appended without waiting, so they form few batches, each of several buffers; one
        // value is larger than a buffer.
        let big = vec![b'b'; 6 * BLOCK as usize];
        let mut last = 0;
        for i in 0..120 {
            let v = if i == 60 { big.clone() } else { value(i) };
            last = log.append(&put(format!("k{i}").as_bytes(), &v)).unwrap();
        }
        log.durable(last).await.unwrap();
        // About 20 KiB of records in buffers of at most 2 KiB (but the big one's).
        assert!(log.stats().writes >= 8, "{:?}", log.stats());
        log.close().await.unwrap();
        drop(log);
        let (_, report, replayed) = open(dir, &config).await.unwrap();
        let mut want = expected_puts(0, 120);
        want[60].1 = big;
        assert_eq!(puts(&replayed), want);
        assert!(report.torn_tail.is_none(), "{report}");
    });
}

#[test]
fn a_log_reopened_with_another_block_size_keeps_every_record() {
    // Larger blocks after the reopen, then smaller ones: buffers sealed for one block size
    // are written into segments of the other.
    for (before, after) in [(BLOCK, 2 * BLOCK), (2 * BLOCK, BLOCK)] {
        reopen_with_another_block_size(before, after);
    }
}

fn reopen_with_another_block_size(before: u64, after: u64) {
    run(async {
        let dir = MemDir::new(BLOCK);
        let (log, _, _) = open(dir.clone(), &small(before, 16)).await.unwrap();
        put_each(&log, 0, 10).await;
        log.close().await.unwrap();
        drop(log);
        // The recovered segment keeps its blocks; the segments after it get the new size, and
        // batches of several sealed buffers cross from one to the other.
        let config = small(after, 8);
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        let mut last = 0;
        for i in 10..200 {
            last = log
                .append(&put(format!("k{i}").as_bytes(), &value(i)))
                .unwrap();
            if i % 40 == 0 {
                log.durable(last).await.unwrap();
            }
        }
        log.durable(last).await.unwrap();
        assert!(log.stats().segments > 3, "{:?}", log.stats());
        log.close().await.unwrap();
        drop(log);
        let (_, report, replayed) = open(dir, &config)
            .await
            .unwrap_or_else(|e| panic!("{before} -> {after}: {e:?}"));
        assert_eq!(
            puts(&replayed),
            expected_puts(0, 200),
            "{before} -> {after}"
        );
        assert!(report.torn_tail.is_none(), "{before} -> {after}: {report}");
        assert!(report.skipped.is_empty(), "{before} -> {after}: {report}");
    });
}

#[test]
fn a_record_larger_than_a_segment_is_refused_not_logged() {
    run(async {
        let config = small(BLOCK, 8);
        let (log, _, _) = open(MemDir::new(BLOCK), &config).await.unwrap();
        let big = vec![7u8; 8 * BLOCK as usize];
        assert!(matches!(
            log.append(&put(b"k", &big)),
            Err(Error::RecordTooLarge { .. })
        ));
        put_each(&log, 0, 1).await;
    });
}

#[test]
fn a_record_that_just_fits_a_segment_is_logged_and_one_byte_more_is_not() {
    run(async {
        let config = small(BLOCK, 8);
        let dir = MemDir::new(BLOCK);
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        let (max, seq) = (config.max_payload(), log.next_seq());
        let payload = |n: usize| put(b"k", &vec![7u8; n]).encoded_len(seq) - FRAME_LEN;
        let fits = (0..max).rev().find(|&n| payload(n) <= max).unwrap();
        assert!(payload(fits + 1) > max);
        assert!(matches!(
            log.append(&put(b"k", &vec![7u8; fits + 1])),
            Err(Error::RecordTooLarge { .. })
        ));
        let seq = log.append(&put(b"k", &vec![7u8; fits])).unwrap();
        log.durable(seq).await.unwrap();
        log.close().await.unwrap();
        drop(log);
        let (_, _, replayed) = open(dir, &config).await.unwrap();
        let values: Vec<usize> = puts(&replayed).iter().map(|(_, v)| v.len()).collect();
        assert_eq!(values, [fits]);
    });
}
