//! The log's contract, on the in-memory directory: order, group commit, what is acknowledged,
//! and what faults do (how records are laid out in segments: `log_layout.rs`).

mod support;

use std::cell::RefCell;
use std::rc::Rc;

use kvmesh_wal::testing::{Fault, MemDir};
use kvmesh_wal::{Config, Error, Fsync};
use support::*;

const BLOCK: u64 = 512;

#[test]
fn records_replay_in_order_after_reopen() {
    run(async {
        let dir = MemDir::new(BLOCK);
        let config = small(BLOCK, 64);
        let (log, report, replayed) = open(dir.clone(), &config).await.unwrap();
        assert!(replayed.is_empty());
        assert_eq!(report.next_seq, 1);
        put_each(&log, 0, 50).await;
        log.close().await.unwrap();
        drop(log);
        let (log, report, replayed) = open(dir.clone(), &config).await.unwrap();
        assert_eq!(puts(&replayed), expected_puts(0, 50));
        assert!(
            report.torn_tail.is_none() && report.skipped.is_empty(),
            "{report}"
        );
        // Sequence numbers continue after the last record, sync markers included.
        assert!(log.next_seq() > 50, "{}", log.next_seq());
        let seqs: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    });
}

#[test]
fn concurrent_writers_share_syncs() {
    run(async {
        let dir = MemDir::new(BLOCK);
        let config = small(BLOCK, 1024);
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        let writers = 50;
        let each = 20;
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for i in 0..each {
                        let key = format!("w{w}-{i}");
                        let seq = log.append(&put(key.as_bytes(), b"v")).unwrap();
                        log.durable(seq).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let stats = log.stats();
        let puts = (writers * each) as u64;
        // One sync per write round at most, and far fewer syncs than records.
        assert!(stats.syncs * 10 < puts, "{stats:?}");
        assert!(stats.writes <= stats.syncs + 1, "{stats:?}");
        log.close().await.unwrap();
        let (_, _, replayed) = open(dir, &config).await.unwrap();
        assert_eq!(support::puts(&replayed).len(), puts as usize);
    });
}

/// An empty in-memory directory whose files link each commit's sync behind its write, or not.
fn mem_dir(links: bool) -> MemDir {
    let dir = MemDir::new(BLOCK);
    dir.set_links(links);
    dir
}

/// A log on a fresh in-memory directory (its files linking syncs behind writes, or not), with
/// `syncs_in_flight` syncs at once and segments of `blocks` blocks; its directory and config.
async fn open_mem(
    links: bool,
    syncs_in_flight: usize,
    blocks: u64,
) -> (MemDir, Config, kvmesh_wal::Log) {
    let dir = mem_dir(links);
    let config = Config {
        syncs_in_flight,
        ..small(BLOCK, blocks)
    };
    let (log, _, _) = open(dir.clone(), &config).await.unwrap();
    (dir, config, log)
}

/// Yields until `dir` has seen `n` syncs (`Faults::syncs`).
async fn until_syncs(dir: &MemDir, n: u64) {
    while dir.faults().syncs() < n {
        futures_lite::future::yield_now().await;
    }
}

/// Writers that each put `each` keys, waiting for each acknowledgement; the puts acknowledged.
async fn acked_puts(log: &kvmesh_wal::Log, writers: u64, each: u64) -> Rc<RefCell<Vec<u64>>> {
    let acked = Rc::new(RefCell::new(Vec::new()));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (log, acked) = (log.clone(), acked.clone());
            glommio::spawn_local(async move {
                for i in 0..each {
                    let n = w * each + i;
                    let Ok(seq) = log.append(&put(format!("k{n}").as_bytes(), &value(n))) else {
                        return;
                    };
                    if log.durable(seq).await.is_err() {
                        return;
                    }
                    acked.borrow_mut().push(n);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    acked
}

#[test]
fn every_acknowledged_record_survives_a_power_loss_with_fsync_always() {
    let cases = [1, 3, 7, 12, 20, 33]
        .into_iter()
        .flat_map(|crash| [(crash, 1), (crash, 2), (crash, 3)])
        .flat_map(|case| [(case, true), (case, false)]);
    for ((crash_after_writes, syncs_in_flight), links) in cases {
        run(async move {
            let (dir, config, log) = open_mem(links, syncs_in_flight, 16).await;
            // Slow syncs, so that with several in flight a later one completes first.
            for n in [0, 2, 5] {
                dir.faults().on_sync(n, Fault::Stall(3 + n as u32 * 7));
            }
            // The "crash": the write after `crash_after_writes` fails, so nothing after it is
            // acknowledged; a power loss then keeps only what was synced.
            dir.faults()
                .on_write(crash_after_writes, Fault::Torn(BLOCK as usize));
            let acked = acked_puts(&log, 10, 10).await;
            let after = dir.crash_copy(true);
            let (_, report, replayed) = open(after, &config).await.unwrap();
            let present: std::collections::HashMap<String, Vec<u8>> =
                puts(&replayed).into_iter().collect();
            for &n in acked.borrow().iter() {
                assert_eq!(
                    present.get(&format!("k{n}")),
                    Some(&value(n)),
                    "acknowledged put {n} lost (crash after {crash_after_writes} writes, \
                     {syncs_in_flight} syncs in flight, links {links}): {report}"
                );
            }
        });
    }
}

/// The power goes out at an arbitrary moment while writers keep appending without waiting for
/// acknowledgements and every sync is slow, so several syncs overlap and complete out of order:
/// every record the log reported durable at that instant is present after reopening.
#[test]
fn a_power_loss_at_any_moment_keeps_every_record_reported_durable() {
    let cases = [1, 2, 3]
        .into_iter()
        .flat_map(|depth| [(depth, true), (depth, false)]);
    for (syncs_in_flight, links) in cases {
        for turns in 1..400 {
            run(async move {
                let (dir, config, log) = open_mem(links, syncs_in_flight, 16).await;
                for n in 0..40u64 {
                    dir.faults()
                        .on_sync(n, Fault::Stall(2 + (n as u32 * 5) % 7));
                }
                // Open-loop writers: each append is followed by a few turns, not by an ack.
                let appended = Rc::new(RefCell::new(Vec::new()));
                let writers: Vec<_> = (0..10u64)
                    .map(|w| {
                        let (log, appended) = (log.clone(), appended.clone());
                        glommio::spawn_local(async move {
                            for i in 0..10u64 {
                                let n = w * 10 + i;
                                let entry = put(format!("k{n}").as_bytes(), &value(n));
                                let Ok(seq) = log.append(&entry) else {
                                    return;
                                };
                                appended.borrow_mut().push((n, seq));
                                for _ in 0..1 + (n * 7) % 5 {
                                    futures_lite::future::yield_now().await;
                                }
                            }
                        })
                    })
                    .collect();
                for _ in 0..turns {
                    futures_lite::future::yield_now().await;
                }
                // The power loss and what the log had reported durable, at the same instant.
                let after = dir.crash_copy(true);
                let durable: Vec<u64> = appended
                    .borrow()
                    .iter()
                    .filter(|&&(_, seq)| log.is_durable(seq))
                    .map(|&(n, _)| n)
                    .collect();
                drop(writers);
                let (_, report, replayed) = open(after, &config).await.unwrap_or_else(|e| {
                    panic!("{syncs_in_flight} in flight, links {links}, {turns} turns: {e}")
                });
                let present: std::collections::HashMap<String, Vec<u8>> =
                    puts(&replayed).into_iter().collect();
                for n in durable {
                    assert_eq!(
                        present.get(&format!("k{n}")),
                        Some(&value(n)),
                        "put {n} was reported durable and is lost ({syncs_in_flight} syncs \
                         in flight, links {links}, power lost after {turns} turns): {report}"
                    );
                }
            });
        }
    }
}

#[test]
fn every_acknowledged_record_survives_a_process_crash_with_fsync_never() {
    for crash_after_writes in [2, 9, 25] {
        run(async move {
            let dir = MemDir::new(BLOCK);
            let config = Config {
                fsync: Fsync::Never,
                ..small(BLOCK, 16)
            };
            let (log, _, _) = open(dir.clone(), &config).await.unwrap();
            dir.faults()
                .on_write(crash_after_writes, Fault::Torn(BLOCK as usize));
            let acked = acked_puts(&log, 10, 10).await;
            assert!(
                log.stats().syncs <= log.stats().segments,
                "never mode syncs only at rotation"
            );
            let (_, report, replayed) = open(dir.crash_copy(false), &config).await.unwrap();
            let present: std::collections::HashMap<String, Vec<u8>> =
                puts(&replayed).into_iter().collect();
            for &n in acked.borrow().iter() {
                assert_eq!(present.get(&format!("k{n}")), Some(&value(n)), "{report}");
            }
        });
    }
}

#[test]
fn enospc_fails_the_log_and_nothing_unlogged_is_acknowledged() {
    run(async {
        let dir = MemDir::new(BLOCK);
        let config = small(BLOCK, 64);
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        put_each(&log, 0, 5).await;
        dir.faults().on_write(0, Fault::Error(libc::ENOSPC));
        let seq = log.append(&put(b"lost", b"v")).unwrap();
        let err = log.durable(seq).await.unwrap_err();
        assert!(err.to_string().contains("no space left"), "{err}");
        assert!(log.failure().unwrap().contains("no space left"));
        // Every later append is refused at once, with the same reason.
        let err = log.append(&put(b"later", b"v")).unwrap_err();
        assert!(
            matches!(&err, Error::Failed(m) if m.contains("no space")),
            "{err}"
        );
        let (_, _, replayed) = open(dir.crash_copy(false), &config).await.unwrap();
        assert_eq!(puts(&replayed), expected_puts(0, 5));
    });
}

#[test]
fn a_failed_sync_acknowledges_nothing_it_covered() {
    for (syncs_in_flight, links) in [(1, true), (1, false), (2, true), (2, false)] {
        run(async move {
            let (dir, _, log) = open_mem(links, syncs_in_flight, 64).await;
            put_each(&log, 0, 3).await;
            dir.faults().on_sync(0, Fault::Error(libc::EIO));
            let seq = log.append(&put(b"k", b"v")).unwrap();
            let err = log.durable(seq).await.unwrap_err();
            assert!(err.to_string().contains("syncing"), "{err}");
            assert!(log.is_durable(seq - 1) && !log.is_durable(seq));
        });
    }
}

/// With two syncs in flight, a younger sync that returns first acknowledges nothing while an
/// older one is still running, and nothing at all once that older one fails: a device that
/// dropped data on a failed flush may report the next flush as a success.
#[test]
fn a_younger_sync_acknowledges_nothing_before_an_older_one_returns_ok() {
    for (syncs_in_flight, links) in [(2, true), (2, false), (3, true), (3, false)] {
        run(async move {
            let (dir, _, log) = open_mem(links, syncs_in_flight, 64).await;
            put_each(&log, 0, 2).await;
            let started = dir.faults().syncs();
            dir.faults()
                .on_sync(0, Fault::StallThenError(200, libc::EIO));
            let first = log.append(&put(b"first", b"1")).unwrap();
            until_syncs(&dir, started + 1).await;
            // Written after the stalled sync started: a second sync covers both and returns.
            let second = log.append(&put(b"second", b"2")).unwrap();
            until_syncs(&dir, started + 2).await;
            for _ in 0..20 {
                futures_lite::future::yield_now().await;
            }
            assert!(log.failure().is_none(), "the older sync is still running");
            assert!(!log.is_durable(first) && !log.is_durable(second));
            let err = log.durable(second).await.unwrap_err();
            assert!(err.to_string().contains("syncing"), "{err}");
            assert!(!log.is_durable(first) && !log.is_durable(second));
        });
    }
}

/// With two syncs in flight, a record written while an older sync is still running gets a
/// sync of its own at once, without waiting for the older one to return; it is acknowledged
/// once both have returned.
#[test]
fn a_record_does_not_wait_for_an_older_sync_before_a_sync_covering_it_starts() {
    for links in [true, false] {
        run(async move {
            let (dir, config, log) = open_mem(links, 2, 64).await;
            put_each(&log, 0, 2).await;
            let (syncs_done, syncs_started) = (log.stats().syncs, dir.faults().syncs());
            dir.faults().on_sync(0, Fault::Stall(200));
            let first = log.append(&put(b"first", b"1")).unwrap();
            until_syncs(&dir, syncs_started + 1).await;
            // The stalled sync covers `first` and is running; `second` is written after it started.
            let second = log.append(&put(b"second", b"2")).unwrap();
            until_syncs(&dir, syncs_started + 2).await;
            assert_eq!(
                log.stats().syncs,
                syncs_done,
                "the second sync started while the stalled one was in flight"
            );
            log.durable(second).await.unwrap();
            assert!(log.is_durable(first));
            assert_eq!(log.stats().syncs, syncs_done + 2);
            let (_, _, replayed) = open(dir.crash_copy(true), &config).await.unwrap();
            let present = puts(&replayed);
            for key in ["first", "second"] {
                assert!(
                    present.iter().any(|(k, _)| k == key),
                    "{key} lost: {present:?}"
                );
            }
        });
    }
}

/// A rotation's own sync of the segment it closes waits for the syncer's older syncs, so it
/// acknowledges nothing before they return `Ok`, and nothing at all when one fails.
#[test]
fn a_rotation_acknowledges_nothing_before_the_older_syncs_return_ok() {
    for links in [true, false] {
        run(async move {
            let (dir, _, log) = open_mem(links, 2, 8).await;
            put_each(&log, 0, 1).await;
            let (segments, started) = (log.stats().segments, dir.faults().syncs());
            dir.faults()
                .on_sync(0, Fault::StallThenError(300, libc::EIO));
            let first = log.append(&put(b"first", b"1")).unwrap();
            until_syncs(&dir, started + 1).await;
            // More than a segment holds: the writer must rotate.
            let big = vec![b'b'; 2 * BLOCK as usize];
            let mut last = first;
            for i in 0..4 {
                last = log
                    .append(&put(format!("big{i}").as_bytes(), &big))
                    .unwrap();
            }
            for _ in 0..100 {
                futures_lite::future::yield_now().await;
            }
            assert!(log.failure().is_none(), "the stalled sync is still running");
            assert!(!log.is_durable(first), "{:?}", log.stats());
            let err = log.durable(last).await.unwrap_err();
            assert!(err.to_string().contains("syncing"), "{err}");
            assert!(!log.is_durable(first));
            assert_eq!(log.stats().segments, segments, "no rotation completed");
        });
    }
}

/// `close` returns once the syncs in flight have returned, and reports one that fails.
#[test]
fn close_waits_for_the_syncs_in_flight() {
    for (fault, links) in [
        (Fault::Stall(200), true),
        (Fault::Stall(200), false),
        (Fault::StallThenError(200, libc::EIO), true),
        (Fault::StallThenError(200, libc::EIO), false),
    ] {
        run(async move {
            let (dir, _, log) = open_mem(links, 2, 64).await;
            put_each(&log, 0, 2).await;
            let (syncs_done, syncs_started) = (log.stats().syncs, dir.faults().syncs());
            dir.faults().on_sync(0, fault);
            log.append(&put(b"k", b"v")).unwrap();
            until_syncs(&dir, syncs_started + 1).await;
            let closed = log.close().await;
            match fault {
                Fault::Stall(_) => {
                    closed.unwrap();
                    // The stalled sync, then the writer's last one.
                    assert_eq!(log.stats().syncs, syncs_done + 2);
                }
                _ => {
                    let err = closed.unwrap_err();
                    assert!(err.to_string().contains("syncing"), "{err}");
                }
            }
        });
    }
}

#[test]
fn no_sync_in_flight_is_refused_at_open() {
    run(async {
        let config = Config {
            syncs_in_flight: 0,
            ..small(BLOCK, 64)
        };
        let err = open(MemDir::new(BLOCK), &config).await.err().unwrap();
        assert!(
            matches!(&err, Error::Unsupported(m) if m.contains("--wal-syncs-in-flight")),
            "{err}"
        );
    });
}

/// A short write is continued, and its record acknowledged only once synced whole: a sync
/// linked behind the short write was cancelled with it and covers nothing.
#[test]
fn a_short_write_is_continued() {
    for links in [true, false] {
        run(async move {
            let dir = mem_dir(links);
            let config = small(BLOCK, 64);
            let (log, _, _) = open(dir.clone(), &config).await.unwrap();
            dir.faults().on_write(0, Fault::Short(BLOCK as usize));
            let big = vec![b'z'; 3 * BLOCK as usize];
            let seq = log.append(&put(b"big", &big)).unwrap();
            log.durable(seq).await.unwrap();
            assert!(log.stats().writes >= 1);
            assert_eq!(
                dir.linked() > 0,
                links,
                "the short write was linked: {links}"
            );
            let (_, report, replayed) = open(dir.crash_copy(true), &config).await.unwrap();
            assert_eq!(
                puts(&replayed),
                vec![("big".to_string(), big.clone())],
                "links {links}: {report}"
            );
            log.close().await.unwrap();
            let (_, _, replayed) = open(dir, &config).await.unwrap();
            assert_eq!(puts(&replayed), vec![("big".to_string(), big)]);
        });
    }
}

/// While the writer has a write in flight with a sync linked behind it, the syncer starts no
/// sync of its own (the linked one covers all written before it; one started meanwhile could
/// be applied before it returned), so no more than `syncs_in_flight` syncs ever run at once.
#[test]
fn no_more_syncs_run_at_once_than_allowed_when_syncs_are_linked() {
    for syncs_in_flight in [1, 2] {
        run(async move {
            let (dir, config, log) = open_mem(true, syncs_in_flight, 1024).await;
            for n in 0..400 {
                dir.faults()
                    .on_sync(n, Fault::Stall(1 + (n as u32 * 7) % 5));
            }
            // Open-loop writers, so that commits follow each other while syncs run.
            let writers: Vec<_> = (0..10u64)
                .map(|w| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        let mut last = 0;
                        for i in 0..20u64 {
                            let n = w * 20 + i;
                            last = log
                                .append(&put(format!("k{n}").as_bytes(), &value(n)))
                                .unwrap();
                            for _ in 0..1 + (n * 3) % 7 {
                                futures_lite::future::yield_now().await;
                            }
                        }
                        log.durable(last).await.unwrap();
                    })
                })
                .collect();
            for w in writers {
                w.await;
            }
            assert!(dir.linked() > 0);
            assert!(
                dir.max_syncs_running() <= syncs_in_flight as u64,
                "{} syncs ran at once, {syncs_in_flight} allowed",
                dir.max_syncs_running()
            );
            let (_, report, replayed) = open(dir.crash_copy(true), &config).await.unwrap();
            assert_eq!(puts(&replayed).len(), 200, "{report}");
        });
    }
}

/// With `Fsync::Always` a commit's sync goes linked behind its write where the file can link
/// them, and the syncer then starts no sync of its own for what that one covers: one sync per
/// commit either way.
#[test]
fn a_commit_sync_linked_behind_its_write_is_its_only_sync() {
    for links in [true, false] {
        run(async move {
            let dir = mem_dir(links);
            let config = small(BLOCK, 64);
            let (log, _, _) = open(dir.clone(), &config).await.unwrap();
            let (writes, syncs) = (dir.faults().writes(), dir.faults().syncs());
            // Slow syncs: each is still running when the writer reports its write done.
            for n in 0..40 {
                dir.faults().on_sync(n, Fault::Stall(5));
            }
            put_each(&log, 0, 20).await;
            let commits = dir.faults().writes() - writes;
            assert!(commits >= 20, "links {links}: {commits} commit writes");
            assert_eq!(
                dir.faults().syncs() - syncs,
                commits,
                "links {links}: one sync per commit"
            );
            assert_eq!(dir.linked(), if links { commits } else { 0 });
            let (_, _, replayed) = open(dir.crash_copy(true), &config).await.unwrap();
            assert_eq!(puts(&replayed), expected_puts(0, 20));
        });
    }
}

#[test]
fn a_write_that_stores_nothing_fails_the_log() {
    run(async {
        let dir = MemDir::new(BLOCK);
        let (log, _, _) = open(dir.clone(), &small(BLOCK, 64)).await.unwrap();
        dir.faults().on_write(0, Fault::Short(0));
        let seq = log.append(&put(b"k", b"v")).unwrap();
        let err = log.durable(seq).await.unwrap_err();
        assert!(err.to_string().contains("short write"), "{err}");
    });
}

#[test]
fn a_full_disk_when_preparing_the_next_segment_fails_at_rotation() {
    run(async {
        let dir = MemDir::new(BLOCK);
        let config = small(BLOCK, 8);
        // The background preparation and the retry at rotation both find the disk full.
        dir.faults().on_zero_fill(1, Fault::Error(libc::ENOSPC));
        dir.faults().on_zero_fill(2, Fault::Error(libc::ENOSPC));
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        let mut acked = 0;
        let err = loop {
            let seq = log
                .append(&put(format!("k{acked}").as_bytes(), &value(acked)))
                .unwrap();
            match log.durable(seq).await {
                Ok(()) => acked += 1,
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("no space left"), "{err}");
        assert!(acked > 0);
        let (_, _, replayed) = open(dir.crash_copy(false), &config).await.unwrap();
        assert_eq!(puts(&replayed), expected_puts(0, acked));
    });
}

#[test]
fn interval_mode_syncs_on_its_own() {
    run(async {
        let dir = MemDir::new(BLOCK);
        let config = Config {
            fsync: Fsync::Interval,
            fsync_interval: std::time::Duration::from_millis(5),
            ..small(BLOCK, 64)
        };
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        put_each(&log, 0, 10).await; // acknowledged when written
        let start = std::time::Instant::now();
        while log.stats().syncs == 0 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no interval sync"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let (_, _, replayed) = open(dir.crash_copy(true), &config).await.unwrap();
        assert_eq!(puts(&replayed), expected_puts(0, 10));
    });
}
