//! Segment files: their names, their preparation (preallocated and zeroed before first use),
//! their header, and padded block writes.

use crate::error::{Error, Result};
use crate::header::{self, Header};
use crate::io::{SegmentDir, SegmentFile};

/// The file name of segment `index`: twelve digits, so names sort in log order.
pub fn name(index: u64) -> String {
    format!("{index:012}.wal")
}

/// The index in a segment's file name, or `None` for any other file.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates segment `index` as `size` bytes of written zeros, synced, with its name synced in
/// the directory. A leftover file of that name (a preparation cut short by a crash, or an
/// unused spare) is replaced.
pub async fn prepare<D: SegmentDir>(dir: &D, index: u64, size: u64) -> Result<D::File> {
    let name = name(index);
    let path = dir.path(&name);
    match dir.remove(&name) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing", path, e)),
    }
    let file = dir
        .create(&name)
        .await
        .map_err(|e| Error::io("creating", path.clone(), e))?;
    file.zero_fill(size)
        .await
        .map_err(|e| Error::io("preallocating and zeroing", path.clone(), e))?;
    dir.sync()
        .map_err(|e| Error::io("syncing the directory of", path, e))?;
    Ok(file)
}

/// Writes `header` into block 0 of a prepared segment.
pub async fn write_header<F: SegmentFile>(file: &F, path: &str, header: &Header) -> Result<()> {
    let bytes = header::encode(header);
    write_padded(file, path, &bytes, 0, u64::from(header.block)).await?;
    Ok(())
}

/// Writes `data` at `pos` (a multiple of `block`), zero-padded to whole blocks, from an aligned
/// buffer; a short write is continued where it stopped. Returns the bytes written, padding
/// included.
pub async fn write_padded<F: SegmentFile>(
    file: &F,
    path: &str,
    data: &[u8],
    pos: u64,
    block: u64,
) -> Result<u64> {
    let total = data.len().div_ceil(block as usize) * block as usize;
    let mut done = 0;
    while done < total {
        let mut buf = file.alloc(total - done);
        let bytes = buf.as_mut();
        let from_data = data.len().saturating_sub(done);
        bytes[..from_data].copy_from_slice(&data[done.min(data.len())..]);
        bytes[from_data..].fill(0);
        let n = file
            .write_at(buf, pos + done as u64)
            .await
            .map_err(|e| Error::io("writing", path, e))?;
        if n == 0 || n as u64 % file.alignment() != 0 {
            return Err(Error::ShortWrite {
                file: path.to_string(),
                offset: pos + done as u64,
                written: n,
                len: total - done,
            });
        }
        done += n;
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_log_order() {
        assert_eq!(name(42), "000000000042.wal");
        assert_eq!(parse_name("000000000042.wal"), Some(42));
        for other in [
            "42.wal",
            "000000000042.wal.tmp",
            "00000000004x.wal",
            "LOCK",
            "",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert!(name(9) < name(10));
    }
}
