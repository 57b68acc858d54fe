//! `kvmesh-bench fsync-probe`: the cost of one durable write on a disk, with no server.
//!
//! Two modes, each `--count` rounds of one write followed by `fdatasync`:
//!
//! - **preallocated**: an aligned `O_DIRECT` write of `--write-size` bytes at the next offset of
//!   a file that was preallocated and zeroed (and synced) first, so the sync has only data to
//!   flush: what kvmesh's write-ahead log does;
//! - **append**: a buffered write appended at the end of a growing file, so every sync also
//!   commits the new file size to the journal: what Redis's AOF with `appendfsync always` does.
//!
//! The physical limit of a closed loop of N clients, each waiting for its reply before the
//! next write, is N / (latency of one write + sync): no server can beat it on that disk.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::args::FsyncProbeArgs;

const ALIGN: usize = 4096;

/// Latencies of one mode, in microseconds.
struct Measured {
    write_and_sync: Vec<f64>,
    sync: Vec<f64>,
}

pub fn run(args: FsyncProbeArgs) -> anyhow::Result<()> {
    if args.write_size == 0 || args.write_size % ALIGN != 0 {
        bail!("--write-size must be a positive multiple of {ALIGN}");
    }
    let pre = preallocated(&args).context("preallocated mode")?;
    let app = append(&args).context("append mode")?;
    let n = f64::from(args.concurrency);
    println!(
        "fsync probe in {}: {} rounds per mode, {}-byte writes",
        args.dir.display(),
        args.count,
        args.write_size
    );
    for (name, m) in [("preallocated, O_DIRECT", &pre), ("append, buffered", &app)] {
        println!(
            "{name:<24} write+fdatasync us: p50 {:.1} p99 {:.1} mean {:.1} | fdatasync alone: p50 {:.1} mean {:.1} | limit at {} clients: {:.0} ops/s",
            pct(&m.write_and_sync, 0.50),
            pct(&m.write_and_sync, 0.99),
            mean(&m.write_and_sync),
            pct(&m.sync, 0.50),
            mean(&m.sync),
            args.concurrency,
            n / mean(&m.write_and_sync) * 1e6,
        );
    }
    if args.json {
        println!(
            "{{\"concurrency\":{},\"preallocated_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"mean\":{:.1},\"sync_mean\":{:.1}}},\"append_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"mean\":{:.1},\"sync_mean\":{:.1}}},\"limit_preallocated\":{:.0},\"limit_append\":{:.0}}}",
            args.concurrency,
            pct(&pre.write_and_sync, 0.5),
            pct(&pre.write_and_sync, 0.99),
            mean(&pre.write_and_sync),
            mean(&pre.sync),
            pct(&app.write_and_sync, 0.5),
            pct(&app.write_and_sync, 0.99),
            mean(&app.write_and_sync),
            mean(&app.sync),
            n / mean(&pre.write_and_sync) * 1e6,
            n / mean(&app.write_and_sync) * 1e6,
        );
    }
    Ok(())
}

fn preallocated(args: &FsyncProbeArgs) -> anyhow::Result<Measured> {
    let path = args.dir.join(".kvmesh-fsync-probe");
    let size = (args.count * args.write_size) as u64;
    // Preallocate and zero with ordinary writes, then sync: the extents are written.
    {
        let mut file = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
    }
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .with_context(|| format!("{}: O_DIRECT", path.display()))?;
    let buf = Aligned::new(args.write_size, 0x5A)?;
    let fd = file.as_raw_fd();
    let mut m = Measured {
        write_and_sync: Vec::with_capacity(args.count),
        sync: Vec::with_capacity(args.count),
    };
    for i in 0..args.count {
        let start = Instant::now();
        let offset = (i * args.write_size) as libc::off_t;
        // SAFETY: `buf` holds write_size bytes aligned to 4096; `fd` is open for writing.
        let n = unsafe { libc::pwrite(fd, buf.ptr.cast(), args.write_size, offset) };
        if n != args.write_size as isize {
            bail!("direct write: {}", std::io::Error::last_os_error());
        }
        let synced = Instant::now();
        file.sync_data()?;
        m.sync.push(synced.elapsed().as_secs_f64() * 1e6);
        m.write_and_sync.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(m)
}

fn append(args: &FsyncProbeArgs) -> anyhow::Result<Measured> {
    let path = args.dir.join(".kvmesh-fsync-probe-append");
    let mut file = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
    let data = vec![0x5Au8; args.write_size];
    let mut m = Measured {
        write_and_sync: Vec::with_capacity(args.count),
        sync: Vec::with_capacity(args.count),
    };
    for _ in 0..args.count {
        let start = Instant::now();
        file.write_all(&data)?;
        let synced = Instant::now();
        file.sync_data()?;
        m.sync.push(synced.elapsed().as_secs_f64() * 1e6);
        m.write_and_sync.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(m)
}

/// A heap block aligned for direct I/O.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize, fill: u8) -> anyhow::Result<Aligned> {
        let layout = std::alloc::Layout::from_size_align(len, ALIGN)?;
        // SAFETY: non-zero size (checked by the caller).
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            bail!("out of memory");
        }
        // SAFETY: `ptr` holds `len` bytes.
        unsafe { std::ptr::write_bytes(ptr, fill, len) };
        Ok(Aligned { ptr, layout })
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(((s.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}
