//! The start-up probe: can this directory hold a log written the way the writer writes it?

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Bytes of the probe's aligned write.
const PROBE_BLOCK: usize = 4096;

/// What the probe learned, beyond "it works".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// Something the operator should know, although the log works there.
    pub warning: Option<String>,
}

/// Checks that `dir` (created if missing) supports what the log needs: files opened with
/// `O_DIRECT`, a 4096-byte aligned write, `fallocate` and `fdatasync`. Runs on any thread,
/// without an executor, so a node can explain a bad directory before it starts its shards.
pub fn probe(dir: &Path) -> Result<Probe> {
    let shown = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", shown.clone(), e))?;
    let mut result = Probe::default();
    if is_tmpfs(dir) {
        result.warning = Some(format!(
            "{shown} is on tmpfs: the log survives a crash of the process, but nothing survives \
             a reboot, and direct I/O is emulated"
        ));
    }
    let file = dir.join(".kvmesh-probe");
    let path = CString::new(file.as_os_str().as_bytes())
        .map_err(|_| Error::Unsupported(format!("{shown}: the path contains a NUL byte")))?;
    let unsupported = |what: &str, e: io::Error| {
        Error::Unsupported(format!(
            "the data directory {shown} does not support {what} ({e}), which kvmesh's write-ahead \
             log needs (it writes with io_uring and O_DIRECT, from preallocated files). Use a \
             directory on a local ext4, xfs or btrfs file system"
        ))
    };
    // SAFETY: a valid NUL-terminated path; the flags and mode are plain integers.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_TRUNC | libc::O_RDWR | libc::O_DIRECT | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => unsupported("opening files with O_DIRECT", e),
            _ => Error::io("creating a probe file in", shown, e),
        });
    }
    let outcome = probe_fd(fd, &unsupported, &shown);
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    let _ = std::fs::remove_file(&file);
    outcome.map(|()| result)
}

fn probe_fd(fd: i32, unsupported: &dyn Fn(&str, io::Error) -> Error, shown: &str) -> Result<()> {
    // SAFETY: fallocate on our own descriptor, with a range inside the file's limits.
    if unsafe { libc::fallocate(fd, 0, 0, (4 * PROBE_BLOCK) as libc::off_t) } != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => unsupported("fallocate", e),
            _ => Error::io("preallocating a probe file in", shown, e),
        });
    }
    let layout = std::alloc::Layout::from_size_align(PROBE_BLOCK, PROBE_BLOCK)
        .map_err(|e| Error::Unsupported(e.to_string()))?;
    // SAFETY: a non-zero size; the block is freed below.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    if buf.is_null() {
        return Err(Error::Unsupported("out of memory".into()));
    }
    // SAFETY: `buf` holds PROBE_BLOCK bytes, aligned to PROBE_BLOCK, as O_DIRECT needs.
    let written = unsafe { libc::pwrite(fd, buf.cast(), PROBE_BLOCK, 0) };
    let write_error = io::Error::last_os_error();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    if written != PROBE_BLOCK as isize {
        return Err(match write_error.raw_os_error() {
            Some(libc::EINVAL) => unsupported("4096-byte aligned direct writes", write_error),
            _ => Error::io("writing a probe file in", shown, write_error),
        });
    }
    // SAFETY: fdatasync on our own descriptor.
    if unsafe { libc::fdatasync(fd) } != 0 {
        return Err(unsupported("fdatasync", io::Error::last_os_error()));
    }
    Ok(())
}

fn is_tmpfs(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a struct of the right type.
    (unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0) && st.f_type == libc::TMPFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_directory_passes_and_is_left_clean() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("data");
        probe(&sub).unwrap();
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
    }

    #[test]
    fn a_file_in_the_way_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = probe(&file).unwrap_err().to_string();
        assert!(e.contains("creating directory") && e.contains("/f"), "{e}");
    }
}
