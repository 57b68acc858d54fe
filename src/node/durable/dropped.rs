//! The drop pass's record: the last topology epoch whose drop pass (see
//! `stream::drop_unowned`) a shard completed, so a node that crashed during one runs it again
//! at start-up (see `change::lifecycle`).
//!
//! ```text
//! DIR/drop/shard-N.epoch   one per shard, replaced whole: written to shard-N.epoch.tmp,
//!                          fsynced, renamed into place, the directory fsynced
//! ```
//!
//! A missing file reads as "none completed" (epoch 0): a node from before the record runs one
//! drop pass at its next start, which drops only what it does not own. A file that does not
//! decode (torn, flipped byte) is reported and also read as 0: running the pass again is safe.
//! A redistribution of the keys over another shard count (`reshard`) removes `DIR/drop/`
//! (the records are per shard index): every shard runs the pass once more at the next start.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"KVDROP01";
const LEN: usize = 20;

/// `DIR/drop`, where the records are.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("drop")
}

fn file(data_dir: &Path, shard: usize) -> PathBuf {
    dir(data_dir).join(format!("shard-{shard}.epoch"))
}

// Layout, 20 bytes: magic "KVDROP01" (8) | epoch, u64 little-endian (8) | CRC-32 (IEEE) of
// the 16 bytes before it, u32 little-endian (4).
pub fn encode(epoch: u64) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&out[..16]);
    out[16..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The epoch in `bytes`, or why they are not a record.
pub fn decode(bytes: &[u8]) -> Result<u64, String> {
    let bytes: &[u8; LEN] = bytes
        .try_into()
        .map_err(|_| format!("{} byte(s), expected {LEN}", bytes.len()))?;
    if &bytes[..8] != MAGIC {
        return Err("bad magic".to_string());
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[16..]);
    let (expected, actual) = (u32::from_le_bytes(crc), crc32fast::hash(&bytes[..16]));
    if expected != actual {
        return Err(format!(
            "CRC mismatch: stored {expected:08x}, computed {actual:08x}"
        ));
    }
    let mut epoch = [0u8; 8];
    epoch.copy_from_slice(&bytes[8..16]);
    Ok(u64::from_le_bytes(epoch))
}

/// The last epoch shard `shard` completed a drop pass at; 0 when it has no (readable) record.
pub fn load(data_dir: &Path, shard: usize) -> u64 {
    let path = file(data_dir, shard);
    match fs::read(&path) {
        Ok(bytes) => decode(&bytes).unwrap_or_else(|why| {
            tracing::warn!(
                "{}: {why}: the drop pass of keys no longer owned runs again",
                path.display()
            );
            0
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::warn!("{}: {e}", path.display());
            0
        }
    }
}

/// Records durably that shard `shard` completed a drop pass at `epoch`.
pub fn save(data_dir: &Path, shard: usize, epoch: u64) -> Result<(), String> {
    let path = file(data_dir, shard);
    let dir = data_dir.join("drop");
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    let tmp = path.with_extension("epoch.tmp");
    let mut out = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
    out.write_all(&encode(epoch))
        .and_then(|_| out.sync_all())
        .map_err(|e| io("writing", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io("renaming", &tmp, e))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", &dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        for epoch in [0, 1, 7, u64::MAX] {
            assert_eq!(decode(&encode(epoch)), Ok(epoch));
        }
        let good = encode(5);
        for i in 0..LEN {
            let mut bad = good;
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipped byte {i}");
        }
        assert!(decode(&good[..LEN - 1]).is_err(), "torn");
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn saved_loaded_and_missing_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), 1), 0);
        save(dir.path(), 1, 4).unwrap();
        save(dir.path(), 1, 6).unwrap();
        assert_eq!(load(dir.path(), 1), 6);
        assert_eq!(load(dir.path(), 0), 0);
        std::fs::write(file(dir.path(), 1), b"garbage").unwrap();
        assert_eq!(load(dir.path(), 1), 0, "unreadable: run again");
    }
}
