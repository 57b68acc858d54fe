//! The data directory: its lock, its identity file, and the start-up probe.
//!
//! ```text
//! DIR/
//!   LOCK                  flock(2)ed by the running node; holds its pid
//!   node.meta             written at first start: format, node id, shard count
//!   shard-0/              shard 0's log segments
//!     000000000001.wal
//!     000000000002.wal
//!     00000000000000000042.snap   the newest snapshot (see kvmesh_wal::snapfile)
//!   shard-1/ ...
//!   hints/shard-N.hints   in a cluster: writes other nodes missed (see cluster::hint_log)
//!   RESHARD, reshard.new/, reshard.old/   only while the shard count changes (see reshard)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Version of `node.meta`'s format.
const META_FORMAT: u32 = 1;
const META: &str = "node.meta";
const LOCK: &str = "LOCK";

/// A locked data directory and the identity it holds. The lock lasts as long as this value.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// This node's id, generated at first start and kept.
    pub node_id: u32,
    /// The shard count the directory was written with.
    pub shards: usize,
    /// A different shard count asked for with `--shards`: the keys must be redistributed
    /// ([`super::reshard`]) before the node starts.
    pub reshard_to: Option<usize>,
    /// What finishing an interrupted redistribution did, if one was found.
    pub resumed: Option<String>,
    /// True when this start created the identity.
    pub created: bool,
    /// From the probe: something the operator should know.
    pub warning: Option<String>,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed, locks it, checks that it supports what the log needs, and
    /// reads its identity, or writes one at first start (node id `id`, or a random one;
    /// `shards`, or `default_shards()`).
    ///
    /// A given `id` must match what the directory holds: a data directory belongs to one node.
    /// A different `shards` is returned as [`DataDir::reshard_to`]. A redistribution that
    /// committed but did not finish is finished first.
    pub fn open(
        path: &Path,
        id: Option<u32>,
        shards: Option<usize>,
        random_id: impl FnOnce() -> u32,
        default_shards: impl FnOnce() -> Result<usize, String>,
    ) -> Result<DataDir, String> {
        std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create the data directory {}: {e}", path.display()))?;
        let path = path
            .canonicalize()
            .map_err(|e| format!("cannot resolve the data directory {}: {e}", path.display()))?;
        let lock = lock(&path)?;
        let probe = kvmesh_wal::probe::probe(&path).map_err(|e| e.to_string())?;
        let meta_path = path.join(META);
        let mut resumed = None;
        let mut reshard_to = None;
        let (node_id, dir_shards, created) = match std::fs::read_to_string(&meta_path) {
            Ok(text) => {
                let (node_id, mut dir_shards) =
                    parse_meta(&text).map_err(|e| format!("{}: {e}", meta_path.display()))?;
                resumed = super::reshard::finish_interrupted(&path, node_id)?;
                if resumed.is_some() {
                    let text = std::fs::read_to_string(&meta_path)
                        .map_err(|e| format!("cannot read {}: {e}", meta_path.display()))?;
                    dir_shards = parse_meta(&text)
                        .map_err(|e| format!("{}: {e}", meta_path.display()))?
                        .1;
                }
                if let Some(id) = id.filter(|&id| id != node_id) {
                    return Err(format!(
                        "--id {id} does not match node id {node_id} kept in {}: a data directory \
                         belongs to one node. Leave --id out, or use another --data-dir",
                        meta_path.display()
                    ));
                }
                reshard_to = shards.filter(|&n| n != dir_shards);
                (node_id, dir_shards, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if has_shard_dirs(&path) {
                    return Err(format!(
                        "{} holds shard logs but no {META}: it was not written by kvmesh, or the \
                         file was removed. Restore it (format = {META_FORMAT}, node_id, shards)",
                        path.display()
                    ));
                }
                let node_id = id.unwrap_or_else(random_id);
                let shards = match shards {
                    Some(n) => n,
                    None => default_shards()?,
                };
                write_meta(&path, node_id, shards)?;
                (node_id, shards, true)
            }
            Err(e) => return Err(format!("cannot read {}: {e}", meta_path.display())),
        };
        Ok(DataDir {
            path,
            node_id,
            shards: dir_shards,
            reshard_to,
            resumed,
            created,
            warning: probe.warning,
            _lock: lock,
        })
    }

    /// The directory, absolute.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The directory of shard `shard`'s segments.
pub fn shard_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(format!("shard-{shard}"))
}

/// Bytes of log in the data directory: recovery reads them all at start.
pub fn log_bytes(data_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("shard-"))
        .filter_map(|e| std::fs::read_dir(e.path()).ok())
        .flat_map(|files| files.flatten())
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn lock(dir: &Path) -> Result<File, String> {
    let path = dir.join(LOCK);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => String::new(),
            pid => format!(" (pid {pid})"),
        };
        return Err(format!(
            "the data directory {} is in use by another kvmesh node{holder}: two nodes cannot \
             share one. Stop that node, or give this one another --data-dir",
            dir.display()
        ));
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(file)
}

fn parse_meta(text: &str) -> Result<(u32, usize), String> {
    let mut format = None;
    let mut node_id = None;
    let mut shards = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("cannot read the line `{line}`"))?;
        let value = value.trim();
        let bad = || format!("`{}` is not a valid {}", value, key.trim());
        match key.trim() {
            "format" => format = Some(value.parse::<u32>().map_err(|_| bad())?),
            "node_id" => node_id = Some(value.parse::<u32>().map_err(|_| bad())?),
            "shards" => shards = Some(value.parse::<usize>().map_err(|_| bad())?),
            other => return Err(format!("unknown setting `{other}`")),
        }
    }
    match (format, node_id, shards) {
        (Some(META_FORMAT), Some(id), Some(n)) if n > 0 => Ok((id, n)),
        (Some(f), _, _) if f != META_FORMAT => Err(format!(
            "format {f}; this kvmesh reads format {META_FORMAT}"
        )),
        _ => Err("needs format, node_id and shards (> 0)".into()),
    }
}

/// Writes `node.meta` through a temporary file, synced and renamed, then syncs the directory.
pub(super) fn write_meta(dir: &Path, node_id: u32, shards: usize) -> Result<(), String> {
    let tmp = dir.join(format!("{META}.tmp"));
    let text = format!(
        "# kvmesh data directory: written at first start, checked at every start.\n\
         format = {META_FORMAT}\nnode_id = {node_id}\nshards = {shards}\n"
    );
    let io = |e: std::io::Error| format!("cannot write {}: {e}", dir.join(META).display());
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, dir.join(META)).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

fn has_shard_dirs(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("shard-"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path, id: Option<u32>, shards: Option<usize>) -> Result<DataDir, String> {
        DataDir::open(path, id, shards, || 77, || Ok(2))
    }

    #[test]
    fn identity_is_created_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = open(&dir, None, None).unwrap();
        assert_eq!((first.node_id, first.shards, first.created), (77, 2, true));
        drop(first);
        let again = open(&dir, Some(77), Some(2)).unwrap();
        assert_eq!((again.node_id, again.shards, again.created), (77, 2, false));
        drop(again);
        let err = open(&dir, Some(5), None).unwrap_err();
        assert!(err.contains("--id 5 does not match node id 77"), "{err}");
        let other = open(&dir, None, Some(4)).unwrap();
        assert_eq!((other.shards, other.reshard_to), (2, Some(4)));
    }

    #[test]
    fn a_second_node_cannot_take_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let held = open(tmp.path(), Some(1), Some(1)).unwrap();
        let err = open(tmp.path(), Some(1), Some(1)).unwrap_err();
        assert!(err.contains("in use by another kvmesh node"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        open(tmp.path(), Some(1), Some(1)).unwrap();
    }

    #[test]
    fn meta_table() {
        let cases = [
            ("format = 1\nnode_id = 9\nshards = 3\n", Ok((9, 3))),
            ("# c\n\nformat=1\nnode_id=9\nshards=3", Ok((9, 3))),
            ("format = 2\nnode_id = 9\nshards = 3", Err("format 2")),
            (
                "format = 1\nnode_id = x\nshards = 3",
                Err("not a valid node_id"),
            ),
            ("format = 1\nshards = 3", Err("needs format")),
            ("format = 1\nnode_id = 1\nshards = 0", Err("needs format")),
            ("color = blue", Err("unknown setting")),
        ];
        for (text, want) in cases {
            match (parse_meta(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{text}: {e}"),
                (got, want) => panic!("{text}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn shard_logs_without_meta_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(shard_dir(tmp.path(), 0)).unwrap();
        let err = open(tmp.path(), None, None).unwrap_err();
        assert!(err.contains("no node.meta"), "{err}");
    }
}
