//! An in-memory [`SegmentDir`] with a fault injector, for tests of the log and of what is
//! built on it. It keeps, per file, the bytes written and the bytes the last sync made
//! durable, so a test can simulate a power loss as well as torn writes, short writes, I/O
//! errors and a full disk.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;

use glommio::io::DmaBuffer;

use crate::io::{Linked, SegmentDir, SegmentFile};

/// What an injected fault does to the operation it hits.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with this OS error (`libc::EIO`, `libc::ENOSPC`, ...) and changes nothing.
    Error(i32),
    /// A write stores only its first `n` bytes and reports `n`.
    Short(usize),
    /// A write stores only its first `n` bytes, then fails with `EIO`: a write torn by a crash.
    Torn(usize),
    /// The operation succeeds, but only after `n` turns of the executor: a slow device, so
    /// that later operations may complete first.
    Stall(u32),
    /// The operation runs for `n` turns of the executor, then fails with this OS error and
    /// changes nothing: a slow device that reports a failure after later operations returned.
    StallThenError(u32, i32),
}

/// Faults waiting for the operations they hit. Each is used once.
#[derive(Debug, Default)]
pub struct Faults {
    writes: RefCell<Vec<(u64, Fault)>>,
    syncs: RefCell<Vec<(u64, Fault)>>,
    zero_fills: RefCell<Vec<(u64, Fault)>>,
    writes_done: Cell<u64>,
    syncs_done: Cell<u64>,
    zero_fills_done: Cell<u64>,
    linked: Cell<u64>,
    syncs_running: Cell<u64>,
    max_syncs_running: Cell<u64>,
}

impl Faults {
    /// The write after `n` more writes (0: the next one) gets `fault`.
    pub fn on_write(&self, n: u64, fault: Fault) {
        self.writes
            .borrow_mut()
            .push((self.writes_done.get() + n, fault));
    }

    /// The sync after `n` more syncs gets `fault` (only `Fault::Error`, `Fault::Stall` and
    /// `Fault::StallThenError` apply).
    pub fn on_sync(&self, n: u64, fault: Fault) {
        self.syncs
            .borrow_mut()
            .push((self.syncs_done.get() + n, fault));
    }

    /// The segment preparation after `n` more gets `fault` (only `Fault::Error` applies).
    pub fn on_zero_fill(&self, n: u64, fault: Fault) {
        self.zero_fills
            .borrow_mut()
            .push((self.zero_fills_done.get() + n, fault));
    }

    /// Writes done so far (data and headers; zeroing not counted).
    pub fn writes(&self) -> u64 {
        self.writes_done.get()
    }

    /// Syncs done so far (zeroing's own not counted).
    pub fn syncs(&self) -> u64 {
        self.syncs_done.get()
    }

    fn take(list: &RefCell<Vec<(u64, Fault)>>, counter: &Cell<u64>) -> Option<Fault> {
        let n = counter.get();
        counter.set(n + 1);
        let mut list = list.borrow_mut();
        let i = list.iter().position(|(at, _)| *at == n)?;
        Some(list.remove(i).1)
    }
}

#[derive(Debug, Default)]
struct Contents {
    /// What reads see.
    data: RefCell<Vec<u8>>,
    /// What survives a power loss: the data as of the start of the latest-started sync that
    /// has completed.
    durable: RefCell<Vec<u8>>,
    /// Syncs started (and durable replacements) so far.
    started: Cell<u64>,
    /// Which of them `durable` comes from.
    applied: Cell<u64>,
}

impl Contents {
    /// Numbers a sync (or a durable replacement) that starts now.
    fn start_sync(&self) -> u64 {
        self.started.set(self.started.get() + 1);
        self.started.get()
    }

    /// Sync `generation` completed, making `covered` durable, unless a sync that started
    /// after it has already completed: syncs may complete out of order.
    fn finish_sync(&self, generation: u64, covered: Vec<u8>) {
        if generation > self.applied.get() {
            self.applied.set(generation);
            *self.durable.borrow_mut() = covered;
        }
    }
}

/// An in-memory directory. Clones share the same files and faults.
#[derive(Clone, Debug)]
pub struct MemDir {
    files: Rc<RefCell<BTreeMap<String, Rc<Contents>>>>,
    faults: Rc<Faults>,
    alignment: u64,
    links: Rc<Cell<bool>>,
}

impl MemDir {
    /// An empty directory whose files need writes aligned to `alignment` bytes. Its files link
    /// a commit's sync behind its write, as `DmaFile` does on a device without polling.
    pub fn new(alignment: u64) -> MemDir {
        MemDir {
            files: Rc::default(),
            faults: Rc::default(),
            alignment,
            links: Rc::new(Cell::new(true)),
        }
    }

    /// The most syncs that have run at once so far.
    pub fn max_syncs_running(&self) -> u64 {
        self.faults.max_syncs_running.get()
    }

    /// Commit writes issued with a sync linked behind them so far.
    pub fn linked(&self) -> u64 {
        self.faults.linked.get()
    }

    /// Whether its files link a commit's sync behind its write
    /// ([`SegmentFile::write_commit_then_sync`]) from now on; with `false` they cannot, as on a
    /// device whose I/O goes to glommio's polling ring.
    pub fn set_links(&self, on: bool) {
        self.links.set(on);
    }

    /// The fault injector.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// File names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.files.borrow().keys().cloned().collect()
    }

    /// A file's current bytes.
    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        Some(self.files.borrow().get(name)?.data.borrow().clone())
    }

    /// Replaces a file's bytes, durably (to damage it, or cut it short); false if there is no
    /// such file.
    pub fn set_bytes(&self, name: &str, bytes: Vec<u8>) -> bool {
        let files = self.files.borrow();
        let Some(file) = files.get(name) else {
            return false;
        };
        *file.data.borrow_mut() = bytes.clone();
        file.finish_sync(file.start_sync(), bytes);
        true
    }

    /// A separate directory holding what a crash at this instant would leave: with
    /// `power_loss`, each file as its last sync left it; without, everything written (the
    /// process died, the kernel kept its writes). Faults are not copied.
    pub fn crash_copy(&self, power_loss: bool) -> MemDir {
        let copy = MemDir::new(self.alignment);
        for (name, file) in self.files.borrow().iter() {
            let bytes = if power_loss {
                file.durable.borrow().clone()
            } else {
                file.data.borrow().clone()
            };
            let contents = Contents {
                data: RefCell::new(bytes.clone()),
                durable: RefCell::new(bytes),
                ..Contents::default()
            };
            copy.files
                .borrow_mut()
                .insert(name.clone(), Rc::new(contents));
        }
        copy
    }

    /// Every file reverts to what its last sync made durable.
    pub fn power_loss(&self) {
        for file in self.files.borrow().values() {
            *file.data.borrow_mut() = file.durable.borrow().clone();
        }
    }
}

/// A file of a [`MemDir`].
#[derive(Clone, Debug)]
pub struct MemFile {
    contents: Rc<Contents>,
    faults: Rc<Faults>,
    alignment: u64,
    links: Rc<Cell<bool>>,
}

/// A linked sync, as its write leaves it.
enum LinkedSync {
    /// The write is still running.
    Waiting,
    /// The write completed in full, and the sync started then.
    Started(Pin<Box<dyn Future<Output = io::Result<()>>>>),
    /// The write failed or was short: the sync was cancelled.
    Cancelled,
}

impl MemFile {
    /// A direct write of `buf` at `pos`, with the next write fault applied.
    async fn write_bytes(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        assert!(
            pos % self.alignment == 0 && buf.len() as u64 % self.alignment == 0,
            "unaligned direct write: {} bytes at {pos}",
            buf.len()
        );
        let (keep, result) = match Faults::take(&self.faults.writes, &self.faults.writes_done) {
            None => (buf.len(), Ok(buf.len())),
            Some(Fault::Error(errno)) => (0, Err(io::Error::from_raw_os_error(errno))),
            Some(Fault::Short(n)) => (n.min(buf.len()), Ok(n.min(buf.len()))),
            Some(Fault::Torn(n)) => (
                n.min(buf.len()),
                Err(io::Error::from_raw_os_error(libc::EIO)),
            ),
            Some(Fault::Stall(turns)) => {
                stall(turns).await;
                (buf.len(), Ok(buf.len()))
            }
            Some(Fault::StallThenError(turns, errno)) => {
                stall(turns).await;
                (0, Err(io::Error::from_raw_os_error(errno)))
            }
        };
        // In flight for a turn first: a sync that starts meanwhile need not cover it.
        futures_lite::future::yield_now().await;
        let mut data = self.contents.data.borrow_mut();
        let pos = pos as usize;
        if data.len() < pos + keep {
            data.resize(pos + keep, 0);
        }
        data[pos..pos + keep].copy_from_slice(&buf[..keep]);
        result
    }
}

impl SegmentFile for MemFile {
    type Buf = Vec<u8>;

    fn alloc(&self, len: usize) -> Vec<u8> {
        vec![0xA5; len] // not zero: callers must fill what they write
    }

    fn alignment(&self) -> u64 {
        self.alignment
    }

    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<usize> {
        self.write_bytes(&buf, pos).await
    }

    async fn write_commit(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        self.write_bytes(buf.as_bytes(), pos).await
    }

    fn write_commit_then_sync(&self, buf: Rc<DmaBuffer>, pos: u64) -> Option<Linked> {
        if !self.links.get() {
            return None;
        }
        self.faults.linked.set(self.faults.linked.get() + 1);
        let linked = Rc::new(RefCell::new(LinkedSync::Waiting));
        let (file, after_write) = (self.clone(), linked.clone());
        let write = async move {
            let written = file.write_bytes(buf.as_bytes(), pos).await;
            *after_write.borrow_mut() = match written {
                Ok(n) if n >= buf.len() => {
                    // Started at once, as the kernel starts a linked request: it covers what
                    // was written by now, whenever the caller gets to it.
                    let mut sync: Pin<Box<dyn Future<Output = io::Result<()>>>> =
                        Box::pin(async move { file.sync().await });
                    if let Some(done) = futures_lite::future::poll_once(&mut sync).await {
                        sync = Box::pin(std::future::ready(done));
                    }
                    LinkedSync::Started(sync)
                }
                _ => LinkedSync::Cancelled,
            };
            written
        };
        let sync = async move {
            // Polled once its write returned, as the log does; until then it yields.
            loop {
                let state = std::mem::replace(&mut *linked.borrow_mut(), LinkedSync::Waiting);
                match state {
                    LinkedSync::Waiting => futures_lite::future::yield_now().await,
                    LinkedSync::Started(sync) => return sync.await,
                    LinkedSync::Cancelled => {
                        return Err(io::Error::from_raw_os_error(libc::ECANCELED))
                    }
                }
            }
        };
        Some(Linked {
            write: Box::pin(write),
            sync: Box::pin(sync),
        })
    }

    async fn read_all(&self) -> io::Result<Vec<u8>> {
        Ok(self.contents.data.borrow().clone())
    }

    async fn read_head(&self, len: usize) -> io::Result<Vec<u8>> {
        let data = self.contents.data.borrow();
        Ok(data[..len.min(data.len())].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        // What was written before the call is what it makes durable, however long it takes.
        let fault = Faults::take(&self.faults.syncs, &self.faults.syncs_done);
        if let Some(Fault::Error(errno)) = fault {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let covered = self.contents.data.borrow().clone();
        let generation = self.contents.start_sync();
        let _running = Running::start(&self.faults);
        futures_lite::future::yield_now().await;
        match fault {
            Some(Fault::Stall(turns)) => stall(turns).await,
            Some(Fault::StallThenError(turns, errno)) => {
                stall(turns).await;
                return Err(io::Error::from_raw_os_error(errno));
            }
            _ => {}
        }
        self.contents.finish_sync(generation, covered);
        Ok(())
    }

    async fn zero_fill(&self, len: u64) -> io::Result<()> {
        let fault = Faults::take(&self.faults.zero_fills, &self.faults.zero_fills_done);
        if let Some(Fault::Error(errno)) = fault {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let mut data = self.contents.data.borrow_mut();
        data.clear();
        data.resize(len as usize, 0);
        let contents = &self.contents;
        contents.finish_sync(contents.start_sync(), data.clone());
        Ok(())
    }
}

impl SegmentDir for MemDir {
    type File = MemFile;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.names())
    }

    async fn open(&self, name: &str) -> io::Result<MemFile> {
        let contents = self
            .files
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(self.file(contents))
    }

    async fn create(&self, name: &str) -> io::Result<MemFile> {
        let mut files = self.files.borrow_mut();
        if files.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let contents = Rc::new(Contents::default());
        files.insert(name.to_string(), contents.clone());
        Ok(self.file(contents))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files
            .borrow_mut()
            .remove(name)
            .map(drop)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.files.borrow_mut();
        let contents = files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        files.insert(to.to_string(), contents);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn path(&self, name: &str) -> String {
        format!("mem/{name}")
    }
}

/// A sync counted as running until dropped.
struct Running<'a>(&'a Faults);

impl<'a> Running<'a> {
    fn start(faults: &'a Faults) -> Running<'a> {
        let running = faults.syncs_running.get() + 1;
        faults.syncs_running.set(running);
        faults
            .max_syncs_running
            .set(faults.max_syncs_running.get().max(running));
        Running(faults)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.syncs_running.set(self.0.syncs_running.get() - 1);
    }
}

/// Lets the executor run `turns` times.
async fn stall(turns: u32) {
    for _ in 0..turns {
        futures_lite::future::yield_now().await;
    }
}

impl MemDir {
    fn file(&self, contents: Rc<Contents>) -> MemFile {
        MemFile {
            contents,
            faults: self.faults.clone(),
            alignment: self.alignment,
            links: self.links.clone(),
        }
    }
}
