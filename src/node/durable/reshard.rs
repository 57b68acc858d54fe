//! A change of shard count: the data directory's keys are redistributed at start.
//!
//! Each shard's log holds only the keys `kvmesh_net::shard_for(key, shards)` gives it, so a
//! node started with another `--shards` than its data directory was written with first moves
//! every key to its new shard. It reads each old shard (newest snapshot, then its later
//! records, exactly as a start would), re-hashes every live key, and writes one snapshot per
//! new shard. The order of operations makes a crash at any point recoverable, with no key lost:
//!
//! 1. the new shards' snapshots are written, synced and checked in `DIR/reshard.new/shard-j/`;
//!    a crash here leaves the old layout intact, and the next start removes the staging;
//! 2. the marker `DIR/RESHARD` (`from`, `to`) is written and synced: the commit point;
//! 3. the old `DIR/shard-i/` are moved into `DIR/reshard.old/`, then the new ones into `DIR/`,
//!    each a rename; `node.meta` gets the new count; the marker is removed; then both staging
//!    directories. Whenever a start finds the marker, it finishes step 3 first
//!    ([`finish_interrupted`]): the staged layout is complete and durable by then.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kvmesh_engine::{Config as StoreConfig, Cursor, Store};
use kvmesh_wal::dma::DmaDir;
use kvmesh_wal::snapfile::Writer;
use kvmesh_wal::snapshot::{Entry, Header};

use super::datadir;
use super::Replay;

const MARKER: &str = "RESHARD";
const NEW: &str = "reshard.new";
const OLD: &str = "reshard.old";

/// Redistributes the data directory `data_dir`, written with `from` shards, to `to` shards.
/// Returns the report to print. On error nothing of the old layout has changed (except a
/// torn log tail truncated, as any start does).
pub fn run(
    data_dir: &Path,
    node_id: u32,
    from: usize,
    to: usize,
    wal: &kvmesh_wal::Config,
) -> Result<String, String> {
    crate::node::raise_memlock()?;
    let started = Instant::now();
    let staging = data_dir.join(NEW);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| io("removing", &staging, e))?;
    }
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| format!("cannot start an io_uring executor to redistribute: {e}"))?;
    let (read, written, notes) =
        executor.run(stage(data_dir.to_path_buf(), from, to, wal.clone()))?;
    sync_dir(&staging)?;
    let marker = data_dir.join(MARKER);
    write_synced(&marker, &format!("from = {from}\nto = {to}\n"))?;
    sync_dir(data_dir)?;
    finish_interrupted(data_dir, node_id)?;
    let per_shard: Vec<String> = written
        .iter()
        .enumerate()
        .map(|(j, n)| format!("shard {j}: {n}"))
        .collect();
    let mut report = format!(
        "redistributed {read} keys from {from} shard(s) to {to} in {} ms ({}); the old shards' \
         files were removed once the new ones were durable",
        started.elapsed().as_millis(),
        per_shard.join(", ")
    );
    for note in notes {
        report.push_str(&format!("\n{note}"));
    }
    Ok(report)
}

/// Reads every old shard and writes the new shards' snapshots into the staging directory.
/// Returns the keys read and the keys written per new shard, and the old shards' reports.
async fn stage(
    data_dir: PathBuf,
    from: usize,
    to: usize,
    wal: kvmesh_wal::Config,
) -> Result<(u64, Vec<u64>, Vec<String>), String> {
    let mut writers = Vec::with_capacity(to);
    for j in 0..to {
        let path = datadir::shard_dir(&data_dir.join(NEW), j);
        let dir = DmaDir::create_all(&path)
            .await
            .map_err(|e| io("creating", &path, e))?;
        let header = Header {
            shard: j as u32,
            shards: to as u32,
            covered_seq: 1,
            entries_hint: 0,
        };
        let writer = Writer::create(dir, header)
            .await
            .map_err(|e| format!("redistributing: {e}"))?;
        writers.push(writer);
    }
    let mut written = vec![0u64; to];
    let (mut read, mut notes) = (0u64, Vec::new());
    let unbounded = StoreConfig {
        max_memory: u64::MAX / 2,
        max_key_len: usize::MAX / 4,
        max_value_len: usize::MAX / 4,
        tombstone_grace_ms: 0,
    };
    for i in 0..from {
        let path = datadir::shard_dir(&data_dir, i);
        if !path.exists() {
            continue; // a shard that never started: it holds nothing
        }
        let dir = DmaDir::create_all(&path)
            .await
            .map_err(|e| io("opening", &path, e))?;
        let mut store = Store::new(unbounded.clone());
        let replay = std::cell::RefCell::new(Replay::new(crate::node::now_ms()));
        let store_cell = std::cell::RefCell::new(&mut store);
        let report = kvmesh_wal::replay(
            &dir,
            i as u32,
            &wal,
            |h| store_cell.borrow_mut().reserve(h.entries_hint as usize),
            |e| replay.borrow_mut().load(&mut store_cell.borrow_mut(), e),
            |r| replay.borrow_mut().apply(&mut store_cell.borrow_mut(), r),
        )
        .await
        .map_err(|e| format!("redistributing: old shard {i}: {e}; nothing was changed"))?;
        notes.push(format!(
            "old {}",
            report.to_string().replace('\n', "\nold ")
        ));
        let now = crate::node::now_ms();
        let mut cursor = Some(Cursor::START);
        while let Some(at) = cursor {
            cursor = store.scan(at, 4096, now, |e| {
                let j = kvmesh_net::shard_for(e.key, to);
                writers[j].push(&Entry {
                    key: e.key,
                    value: e.value,
                    expires_at_ms: e.expires_at_ms,
                    version_hlc: e.version.hlc,
                    version_node: e.version.node,
                });
                written[j] += 1;
                read += 1;
            });
            for w in &mut writers {
                w.flush()
                    .await
                    .map_err(|e| format!("redistributing: {e}"))?;
            }
        }
    }
    for (j, w) in writers.into_iter().enumerate() {
        // `finish` reads each snapshot back: count what it holds, not what was pushed.
        let done = w
            .finish()
            .await
            .map_err(|e| format!("redistributing: {e}"))?;
        if done.entries != written[j] {
            return Err(format!(
                "redistributing: {} holds {} keys, {} were written to it; nothing was changed",
                done.file, done.entries, written[j]
            ));
        }
    }
    Ok((read, written, notes))
}

/// Finishes a redistribution whose marker is present (see the module docs), or removes the
/// staging of one that never reached its marker. Returns what it did, if anything. Pure file
/// operations: safe to run before anything else reads the data directory.
pub fn finish_interrupted(data_dir: &Path, node_id: u32) -> Result<Option<String>, String> {
    let marker = data_dir.join(MARKER);
    let (new, old) = (data_dir.join(NEW), data_dir.join(OLD));
    let text = match fs::read_to_string(&marker) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut did = None;
            for leftover in [&new, &old] {
                if leftover.exists() {
                    fs::remove_dir_all(leftover).map_err(|e| io("removing", leftover, e))?;
                    did = Some(format!(
                        "removed {}: left by a redistribution that had not committed or had \
                         finished",
                        leftover.display()
                    ));
                }
            }
            return Ok(did);
        }
        Err(e) => return Err(io("reading", &marker, e)),
    };
    let to = parse_marker(&text).ok_or_else(|| {
        format!(
            "{}: cannot read `{}`; it should say `from = N` and `to = M`",
            marker.display(),
            text.trim()
        )
    })?;
    let staged = shard_dirs(&new)?;
    if staged.len() == to {
        // The moves have not begun, or only the old shards' have: move the rest aside.
        fs::create_dir_all(&old).map_err(|e| io("creating", &old, e))?;
        for name in shard_dirs(data_dir)? {
            let (src, dst) = (data_dir.join(&name), old.join(&name));
            fs::rename(&src, &dst).map_err(|e| io("moving", &src, e))?;
        }
        sync_dir(&old)?;
        sync_dir(data_dir)?;
    }
    for name in shard_dirs(&new)? {
        let (src, dst) = (new.join(&name), data_dir.join(&name));
        fs::rename(&src, &dst).map_err(|e| io("moving", &src, e))?;
    }
    sync_dir(&new)?;
    sync_dir(data_dir)?;
    // The drop-pass records were per old shard index: a new shard holds keys of old shards
    // whose pass may have been cut. Without them every shard runs the pass once more at start.
    let records = super::dropped::dir(data_dir);
    if records.exists() {
        fs::remove_dir_all(&records).map_err(|e| io("removing", &records, e))?;
    }
    datadir::write_meta(data_dir, node_id, to)?;
    fs::remove_file(&marker).map_err(|e| io("removing", &marker, e))?;
    sync_dir(data_dir)?;
    for dir in [&old, &new] {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| io("removing", dir, e))?;
        }
    }
    Ok(Some(format!(
        "finished moving the data directory to {to} shards (a redistribution had committed \
         before the node stopped)"
    )))
}

/// The `to` count in a marker.
fn parse_marker(text: &str) -> Option<usize> {
    let mut to = None;
    let mut from = None;
    for line in text.lines() {
        let (k, v) = line.split_once('=')?;
        let v = v.trim().parse::<usize>().ok()?;
        match k.trim() {
            "to" => to = Some(v),
            "from" => from = Some(v),
            _ => return None,
        }
    }
    from?;
    to.filter(|&n| n > 0)
}

/// Names of the `shard-N` directories in `dir` (none when it does not exist).
fn shard_dirs(dir: &Path) -> Result<Vec<String>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", dir, e)),
    };
    Ok(entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("shard-")
                .is_some_and(|i| i.parse::<usize>().is_ok())
        })
        .collect())
}

fn write_synced(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io("renaming", &tmp, e))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

fn io(op: &str, path: &Path, e: std::io::Error) -> String {
    format!("redistributing: {op} {}: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_table() {
        assert_eq!(parse_marker("from = 2\nto = 3\n"), Some(3));
        assert_eq!(parse_marker("from=3\nto=1"), Some(1));
        assert_eq!(parse_marker("to = 3\n"), None);
        assert_eq!(parse_marker("from = 2\nto = 0\n"), None);
        assert_eq!(parse_marker("from = 2\nto = x\n"), None);
        assert_eq!(parse_marker("from = 2\ncolor = 3\n"), None);
    }

    /// A fake layout: each shard directory holds one file naming its layout and index.
    fn layout(dir: &Path, tag: &str, n: usize) {
        for i in 0..n {
            let d = dir.join(format!("shard-{i}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("x"), format!("{tag}{i}")).unwrap();
        }
    }

    fn contents(dir: &Path) -> Vec<String> {
        let mut names = shard_dirs(dir).unwrap();
        names.sort();
        names
            .iter()
            .map(|n| fs::read_to_string(dir.join(n).join("x")).unwrap())
            .collect()
    }

    #[test]
    fn a_committed_move_finishes_from_any_point() {
        // Crash points: before any move, after some old shards moved aside, after some new
        // ones moved in, after the meta was rewritten.
        for point in 0..4 {
            let tmp = tempfile::tempdir().unwrap();
            let d = tmp.path();
            datadir::write_meta(d, 9, 2).unwrap();
            layout(d, "old", 2);
            layout(&d.join(NEW), "new", 3);
            fs::write(d.join(MARKER), "from = 2\nto = 3\n").unwrap();
            super::super::dropped::save(d, 0, 7).unwrap();
            if point >= 1 {
                fs::create_dir_all(d.join(OLD)).unwrap();
                fs::rename(d.join("shard-0"), d.join(OLD).join("shard-0")).unwrap();
            }
            if point >= 2 {
                fs::rename(d.join("shard-1"), d.join(OLD).join("shard-1")).unwrap();
                fs::rename(d.join(NEW).join("shard-2"), d.join("shard-2")).unwrap();
            }
            if point >= 3 {
                datadir::write_meta(d, 9, 3).unwrap();
            }
            let did = finish_interrupted(d, 9).unwrap();
            assert!(did.unwrap().contains("3 shards"), "point {point}");
            assert_eq!(contents(d), ["new0", "new1", "new2"], "point {point}");
            assert!(!d.join(MARKER).exists() && !d.join(NEW).exists() && !d.join(OLD).exists());
            assert_eq!(
                super::super::dropped::load(d, 0),
                0,
                "point {point}: pass runs again"
            );
            let meta = fs::read_to_string(d.join("node.meta")).unwrap();
            assert!(
                meta.contains("shards = 3") && meta.contains("node_id = 9"),
                "{meta}"
            );
        }
    }

    #[test]
    fn an_uncommitted_staging_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        layout(d, "old", 2);
        layout(&d.join(NEW), "new", 1);
        let did = finish_interrupted(d, 9).unwrap();
        assert!(did.unwrap().contains("had not committed"));
        assert_eq!(contents(d), ["old0", "old1"]);
        assert_eq!(finish_interrupted(d, 9).unwrap(), None);
    }
}
