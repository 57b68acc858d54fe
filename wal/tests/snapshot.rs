//! Snapshots over the in-memory directory: a snapshot bounds the log, recovery is snapshot
//! plus later records, damage is reported (strict) or counted (tolerant), and a crash at any
//! step of taking one leaves a directory that recovers to the same state.

mod support;

use std::collections::BTreeMap;

use kvmesh_wal::snapfile::{self, Writer};
use kvmesh_wal::snapshot::{Entry as SnapEntry, Header};
use kvmesh_wal::testing::MemDir;
use kvmesh_wal::{Config, Error, Op, Recovery};
use support::*;

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn config() -> Config {
    small(512, 16) // 8 KiB segments: a few hundred puts rotate several times
}

/// Applies a replayed record (or snapshot entry, as a put) to a model of the store.
fn apply(state: &mut State, r: &kvmesh_wal::Record) {
    match r.op {
        Op::Put => {
            state.insert(r.key.clone(), r.value.clone());
        }
        Op::Remove | Op::Evict | Op::Expire => {
            state.remove(&r.key);
        }
        _ => {}
    }
}

async fn reopen(dir: MemDir, config: &Config) -> kvmesh_wal::Result<(State, kvmesh_wal::Report)> {
    let mut state = State::new();
    let (log, report) = kvmesh_wal::open(dir, 0, config.clone(), |r| apply(&mut state, r)).await?;
    log.close().await?;
    Ok((state, report))
}

/// Writes a snapshot of `state` covering the log below `covered`, without releasing.
async fn snapshot(dir: &MemDir, state: &State, covered: u64) -> snapfile::Written {
    let header = Header {
        shard: 0,
        shards: 1,
        covered_seq: covered,
        entries_hint: state.len() as u32,
    };
    let mut w = Writer::create(dir.clone(), header).await.unwrap();
    for (i, (k, v)) in state.iter().enumerate() {
        w.push(&SnapEntry {
            key: k,
            value: v,
            expires_at_ms: 0,
            version_hlc: i as u64 + 1,
            version_node: 1,
        });
        w.flush().await.unwrap();
    }
    w.finish().await.unwrap()
}

fn segments(dir: &MemDir) -> usize {
    dir.names().iter().filter(|n| n.ends_with(".wal")).count()
}

/// A log of 300 puts with a snapshot taken after 200, then 100 more; returns the directory,
/// the model state and the snapshot's name.
fn scenario() -> (MemDir, State, String) {
    let dir = MemDir::new(512);
    let config = config();
    run(async {
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        let mut state = State::new();
        put_each(&log, 0, 200).await;
        for (k, v) in expected_puts(0, 200) {
            state.insert(k.into_bytes(), v);
        }
        let before = segments(&dir);
        let written = snapshot(&dir, &state, log.next_seq()).await;
        assert_eq!(written.entries, 200);
        let released = snapfile::release(&dir, written.covered_seq).await.unwrap();
        assert!(!released.segments.is_empty());
        assert_eq!(segments(&dir), before - released.segments.len());
        put_each(&log, 150, 300).await; // overwrites 150..200, adds 200..300
        for (k, v) in expected_puts(150, 300) {
            state.insert(k.into_bytes(), v);
        }
        log.close().await.unwrap();
        let name = snapfile::name(written.covered_seq);
        (dir.clone(), state, name)
    })
}

#[test]
fn recovery_is_the_snapshot_then_later_records() {
    let (dir, state, name) = scenario();
    let (got, report) = run(reopen(dir.clone(), &config())).unwrap();
    assert_eq!(got, state);
    let loaded = report.snapshot.as_ref().unwrap();
    assert_eq!(loaded.entries, 200);
    assert!(loaded.file.ends_with(&name));
    assert_eq!(report.records, 150, "{report}");
    assert!(report.to_string().contains("loaded snapshot"), "{report}");
    // A second snapshot replaces the first; recovery is the same.
    run(async {
        let (log, _, _) = open(dir.clone(), &config()).await.unwrap();
        let covered = log.next_seq();
        let w = snapshot(&dir, &state, covered).await;
        let released = snapfile::release(&dir, w.covered_seq).await.unwrap();
        assert_eq!(released.snapshots.len(), 1);
        log.close().await.unwrap();
    });
    let (got, report) = run(reopen(dir, &config())).unwrap();
    assert_eq!(got, state);
    assert_eq!(report.records, 0, "{report}");
}

#[test]
fn disk_stays_bounded_under_overwrites() {
    let dir = MemDir::new(512);
    let config = config();
    let mut state = State::new();
    run(async {
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        for round in 0..20u64 {
            for i in 0..50u64 {
                let key = format!("k{i}");
                let v = value(round * 50 + i);
                let seq = log.append(&put(key.as_bytes(), &v)).unwrap();
                log.durable(seq).await.unwrap();
                state.insert(key.into_bytes(), v);
            }
            let w = snapshot(&dir, &state, log.next_seq()).await;
            snapfile::release(&dir, w.covered_seq).await.unwrap();
            let bytes: usize = dir
                .names()
                .iter()
                .map(|n| dir.bytes(n).unwrap().len())
                .sum();
            // One snapshot, the active segment and the spare: never more.
            assert!(segments(&dir) <= 2, "round {round}: {:?}", dir.names());
            let bound = 2 * config.segment_size + w.bytes;
            assert!(bytes as u64 <= bound, "round {round}: {bytes} > {bound}");
        }
        log.close().await.unwrap();
    });
    let (got, _) = run(reopen(dir, &config)).unwrap();
    assert_eq!(got, state);
}

#[test]
fn a_damaged_snapshot_stops_start_up_or_is_counted() {
    let (dir, state, name) = scenario();
    let mut bytes = dir.bytes(&name).unwrap();
    let at = 36 + 16 + 40; // inside the first chunk's entries
    bytes[at] ^= 0x20;
    assert!(dir.set_bytes(&name, bytes));
    let err = run(reopen(dir.crash_copy(false), &config())).unwrap_err();
    assert!(
        matches!(err, Error::SnapshotCorruption { offset: 36, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&name) && text.contains("tolerate-corruption"),
        "{text}"
    );

    let tolerant = Config {
        recovery: Recovery::TolerateCorruption,
        ..config()
    };
    let (got, report) = run(reopen(dir, &tolerant)).unwrap();
    let loaded = report.snapshot.as_ref().unwrap();
    assert_eq!(
        loaded.lost_entries,
        Some(200),
        "one chunk held them all: {report}"
    );
    assert!(
        report.to_string().contains("200 snapshot entries lost"),
        "{report}"
    );
    // What the later records rewrote is back; the rest of the snapshot is lost, not old.
    let want: State = state
        .into_iter()
        .filter(|(k, _)| {
            let i: u64 = String::from_utf8_lossy(&k[1..]).parse().unwrap();
            i >= 150
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_crash_at_any_step_of_a_snapshot_recovers_the_same_state() {
    let config = config();
    // Crash while writing: the temporary file is removed, the log has everything.
    let dir = MemDir::new(512);
    let state = run(async {
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        put_each(&log, 0, 100).await;
        let header = Header {
            shard: 0,
            shards: 1,
            covered_seq: log.next_seq(),
            entries_hint: 0,
        };
        let mut w = Writer::create(dir.clone(), header).await.unwrap();
        w.push(&SnapEntry {
            key: b"k1",
            value: b"torn",
            expires_at_ms: 0,
            version_hlc: 1,
            version_node: 1,
        });
        drop(w); // the process dies here
        log.close().await.unwrap();
        expected_puts(0, 100)
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v))
            .collect::<State>()
    });
    assert!(dir.names().iter().any(|n| snapfile::is_temporary(n)));
    let (got, report) = run(reopen(dir.clone(), &config)).unwrap();
    assert_eq!(got, state);
    assert!(report.to_string().contains("left unfinished"), "{report}");
    assert!(!dir.names().iter().any(|n| snapfile::is_temporary(n)));

    // Crash after the rename, before the covered segments were released: the next start
    // releases them.
    let dir = MemDir::new(512);
    run(async {
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        put_each(&log, 0, 100).await;
        snapshot(&dir, &state, log.next_seq()).await;
        log.close().await.unwrap();
    });
    let before = segments(&dir);
    let (got, report) = run(reopen(dir.clone(), &config)).unwrap();
    assert_eq!(got, state);
    assert_eq!(report.records, 0, "{report}");
    assert!(segments(&dir) < before);
}

#[test]
fn damage_to_records_the_snapshot_covers_loses_nothing() {
    let dir = MemDir::new(512);
    let config = config();
    let state = run(async {
        let (log, _, _) = open(dir.clone(), &config).await.unwrap();
        put_each(&log, 0, 100).await;
        let mut state: State = expected_puts(0, 100)
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v))
            .collect();
        let w = snapshot(&dir, &state, log.next_seq()).await;
        snapfile::release(&dir, w.covered_seq).await.unwrap();
        // The oldest segment left holds covered records: damage its first one, then write
        // more, so later sync markers state that the damaged record had been synced.
        let oldest = dir
            .names()
            .into_iter()
            .find(|n| n.ends_with(".wal"))
            .unwrap();
        let mut bytes = dir.bytes(&oldest).unwrap();
        bytes[512 + 12] ^= 0x40;
        assert!(dir.set_bytes(&oldest, bytes));
        put_each(&log, 100, 130).await;
        for (k, v) in expected_puts(100, 130) {
            state.insert(k.into_bytes(), v);
        }
        log.close().await.unwrap();
        state
    });
    let (got, report) = run(reopen(dir, &config)).unwrap();
    assert_eq!(got, state);
    assert!(report.to_string().contains("nothing lost"), "{report}");
}
