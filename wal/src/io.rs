//! The file operations the log needs, behind two small traits, so tests can put a fault
//! injector ([`crate::testing`]) where production uses glommio's `DmaFile` ([`crate::dma`]).
//!
//! Both traits are used on one glommio executor: their futures are never `Send`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;

use glommio::io::DmaBuffer;

/// A commit's write and the sync linked behind it ([`SegmentFile::write_commit_then_sync`]).
pub struct Linked {
    /// The write: what [`SegmentFile::write_commit`] returns.
    pub write: Pin<Box<dyn Future<Output = io::Result<usize>>>>,
    /// The sync, which the device starts once the write completed in full; it fails when the
    /// write failed or was short (then it did not run).
    pub sync: Pin<Box<dyn Future<Output = io::Result<()>>>>,
}

/// One segment file, written with direct I/O: every write starts at a multiple of
/// [`alignment`](SegmentFile::alignment) and has a length that is one.
#[allow(async_fn_in_trait)] // single-threaded executor: nothing here needs to be Send
pub trait SegmentFile {
    /// A buffer aligned for this file's direct I/O.
    type Buf: AsRef<[u8]> + AsMut<[u8]>;

    /// A buffer of `len` bytes (a multiple of the alignment); its contents are unspecified.
    fn alloc(&self, len: usize) -> Self::Buf;

    /// The alignment direct I/O needs on this file's device, in bytes.
    fn alignment(&self) -> u64;

    /// Writes `buf` at `pos`. Returns the bytes written, which may be fewer (a short write).
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<usize>;

    /// Writes the log's commit buffer `buf` (all of it: its length is a multiple of the
    /// alignment) at `pos`. Returns the bytes written, which may be fewer (a short write); the
    /// caller keeps `buf`, so it can continue from there. Faults apply as to
    /// [`write_at`](SegmentFile::write_at).
    async fn write_commit(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize>;

    /// [`write_commit`](SegmentFile::write_commit), and a [`sync`](SegmentFile::sync) linked
    /// behind it, both handed to the kernel now: the sync starts once the write completed in
    /// full, so it covers that write and every write completed before, without the caller
    /// having to see the write's completion and issue it. `None` (the default) when this file cannot link the two:
    /// the caller then writes, and syncs once the write returned.
    fn write_commit_then_sync(&self, _buf: Rc<DmaBuffer>, _pos: u64) -> Option<Linked> {
        None
    }

    /// The whole file.
    async fn read_all(&self) -> io::Result<Vec<u8>>;

    /// Up to `len` bytes from offset 0 (fewer when the file is shorter).
    async fn read_head(&self, len: usize) -> io::Result<Vec<u8>>;

    /// `fdatasync`: every write completed before the call is durable when it returns.
    async fn sync(&self) -> io::Result<()>;

    /// Makes the file `len` bytes of written zeros and syncs it. The blocks are then allocated
    /// and initialised, so a later write inside them changes no metadata and an `fdatasync`
    /// has only data to flush.
    async fn zero_fill(&self, len: u64) -> io::Result<()>;
}

/// The directory of one shard's segments.
#[allow(async_fn_in_trait)] // single-threaded executor: nothing here needs to be Send
pub trait SegmentDir {
    /// Its files.
    type File: SegmentFile;

    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Opens an existing file for reading and writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;

    /// Creates a new, empty file; fails if it exists.
    async fn create(&self, name: &str) -> io::Result<Self::File>;

    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Renames `from` to `to` atomically, replacing `to`; durable after [`SegmentDir::sync`].
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// `fsync` of the directory itself: created and removed names are durable when it returns.
    fn sync(&self) -> io::Result<()>;

    /// The file's path, for messages.
    fn path(&self, name: &str) -> String;
}
