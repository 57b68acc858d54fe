//! The production [`SegmentDir`]: a real directory, its segments written through glommio's
//! `DmaFile` (io_uring, `O_DIRECT`) from our own aligned buffers.

use std::future::{poll_fn, Future};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use crate::io::{Linked, SegmentDir, SegmentFile};

/// Bytes per zeroing write when a segment is prepared.
const ZERO_CHUNK: usize = 1 << 20;
/// Bytes per read when a segment is read back at recovery.
const READ_CHUNK: u64 = 8 << 20;
/// Size of the file that settles glommio's polling decision: one block of any device.
const PRIME_BLOCK: usize = 64 << 10;

/// A shard's segment directory on a real file system. Clones name the same directory.
#[derive(Clone, Debug)]
pub struct DmaDir {
    path: PathBuf,
}

impl DmaDir {
    /// The directory at `path`, created if missing. Call it on the executor that will use it.
    ///
    /// It also settles, for this executor's thread, whether glommio sends this device's I/O to
    /// its polling ring. glommio decides that once per device and thread, by reading block 0
    /// of the first file it opens there on the polling ring; when that file is empty the read
    /// "succeeds" without touching the device, polling is wrongly enabled, and later reads
    /// fail with EOPNOTSUPP on devices without poll queues. So the first file opened here is
    /// a one-block file that really gets read.
    pub async fn create_all(path: impl Into<PathBuf>) -> io::Result<DmaDir> {
        let path = path.into();
        std::fs::create_dir_all(&path)?;
        let prime = path.join(".kvmesh-dma-probe");
        std::fs::write(&prime, [0u8; PRIME_BLOCK])?;
        let opened = DmaFile::open(&prime).await;
        let _ = std::fs::remove_file(&prime);
        opened?.close().await?;
        Ok(DmaDir { path })
    }

    /// Its path.
    pub fn dir(&self) -> &Path {
        &self.path
    }
}

/// An aligned buffer for a [`DmaSegment`].
pub struct DmaBuf(DmaBuffer);

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl AsMut<[u8]> for DmaBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
}

/// One segment, open for direct I/O.
pub struct DmaSegment {
    file: DmaFile,
}

impl SegmentFile for DmaSegment {
    type Buf = DmaBuf;

    fn alloc(&self, len: usize) -> DmaBuf {
        DmaBuf(self.file.alloc_dma_buffer(len))
    }

    fn alignment(&self) -> u64 {
        self.file.alignment()
    }

    async fn write_at(&self, buf: DmaBuf, pos: u64) -> io::Result<usize> {
        Ok(self.file.write_at(buf.0, pos).await?)
    }

    async fn write_commit(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        Ok(started_now(self.file.write_rc_at(buf, pos)).await?)
    }

    fn write_commit_then_sync(&self, buf: Rc<DmaBuffer>, pos: u64) -> Option<Linked> {
        let (write, sync) = self.file.write_rc_at_then_sync(buf, pos)?;
        glommio::submit_io_now();
        Some(Linked {
            write: Box::pin(async move { Ok(write.await?) }),
            sync: Box::pin(async move { Ok(sync.await?) }),
        })
    }

    async fn read_all(&self) -> io::Result<Vec<u8>> {
        let size = self.file.file_size().await?;
        let mut out = Vec::with_capacity(size as usize);
        let mut pos = 0;
        while pos < size {
            let want = READ_CHUNK.min(size - pos) as usize;
            let got = self.file.read_at(pos, want).await?;
            if got.is_empty() {
                break;
            }
            out.extend_from_slice(&got);
            pos += got.len() as u64;
        }
        Ok(out)
    }

    async fn read_head(&self, len: usize) -> io::Result<Vec<u8>> {
        let size = self.file.file_size().await?;
        let want = (len as u64).min(size) as usize;
        if want == 0 {
            return Ok(Vec::new());
        }
        Ok(self.file.read_at(0, want).await?.to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        Ok(started_now(self.file.fdatasync()).await?)
    }

    async fn zero_fill(&self, len: u64) -> io::Result<()> {
        // Reserve the extents in one go (contiguous, and ENOSPC shows up here), then write
        // them: fallocate alone leaves "unwritten" extents whose conversion on first write
        // would be metadata for every later fdatasync to commit.
        self.file.pre_allocate(len, false).await?;
        let mut zeros = self.file.alloc_dma_buffer(ZERO_CHUNK);
        zeros.as_bytes_mut().fill(0);
        let zeros = Rc::new(zeros);
        let mut pos = 0;
        while pos < len {
            let n = if len - pos >= ZERO_CHUNK as u64 {
                self.file.write_rc_at(zeros.clone(), pos).await?
            } else {
                // The tail (segment sizes are multiples of the block, not of the chunk).
                let mut tail = self.file.alloc_dma_buffer((len - pos) as usize);
                tail.as_bytes_mut().fill(0);
                self.file.write_at(tail, pos).await?
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "zeroing wrote nothing",
                ));
            }
            pos += n as u64;
        }
        Ok(self.file.fdatasync().await?)
    }
}

/// Awaits `io`, a file operation that queues its request when first polled, and hands that
/// request to the kernel right after that poll rather than at the executor's next reactor
/// turn, which comes only after every task already runnable has run. A commit's write and its
/// sync are on every durable reply's path: on a busy shard (many connections woken at once)
/// that turn is 100-200 µs away, paid by the write and again by the sync, while the disk does
/// each in tens of µs (bench/PERFORMANCE.md, "File I/O handed to the kernel at once"). The
/// cost is an `io_uring_enter` per commit write and per sync.
async fn started_now<T>(io: impl Future<Output = T>) -> T {
    let mut io = pin!(io);
    let mut first = true;
    poll_fn(|cx| {
        let polled = io.as_mut().poll(cx);
        if std::mem::take(&mut first) && polled.is_pending() {
            glommio::submit_io_now();
        }
        polled
    })
    .await
}

impl SegmentDir for DmaDir {
    type File = DmaSegment;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    async fn open(&self, name: &str) -> io::Result<DmaSegment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(self.path.join(name))
            .await?;
        Ok(DmaSegment { file })
    }

    async fn create(&self, name: &str) -> io::Result<DmaSegment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(self.path.join(name))
            .await?;
        Ok(DmaSegment { file })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path.join(from), self.path.join(to))
    }

    fn sync(&self) -> io::Result<()> {
        std::fs::File::open(&self.path)?.sync_all()
    }

    fn path(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}
