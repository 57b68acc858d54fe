//! The probe's epoll loop: one thread, level-triggered, shaped like Redis's `ae` loop.
//!
//! Per turn: `epoll_wait`; each readable connection gets one `read` (up to [`READ_CHUNK`]
//! bytes, as Redis reads up to 16 KiB), every whole frame in its buffer is answered into its
//! output buffer; then, before waiting again, every connection with replies gets one `write`
//! of all of them (Redis's `beforeSleep`). A connection whose replies do not all fit in the
//! socket waits for `EPOLLOUT` and is not read meanwhile, so a client that does not read cannot
//! make the probe hold more than one turn's replies.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use super::{answer_all, frame_len, Store};

/// Bytes read per `read` call and the size of a fresh connection's input buffer.
const READ_CHUNK: usize = 16 * 1024;
/// Events taken per `epoll_wait`.
const MAX_EVENTS: usize = 256;
/// The listener's token; connections use their slot index.
const LISTENER: u64 = u64::MAX;

struct Conn {
    stream: TcpStream,
    /// `input[..end]` is read and not answered yet (the start of an incomplete frame).
    input: Vec<u8>,
    end: usize,
    /// Replies not written yet: `out[sent..]`.
    out: Vec<u8>,
    sent: usize,
    /// A frame was refused: close once `out` is written.
    closing: bool,
    /// In this turn's list of connections to write to.
    queued: bool,
    /// Waiting for `EPOLLOUT` (and not reading) because the socket was full.
    blocked: bool,
}

impl Conn {
    /// One `read`, then every whole frame answered. `Ok(false)`: the peer closed.
    fn on_readable(&mut self, store: &mut Store) -> io::Result<bool> {
        if self.input.len() - self.end < READ_CHUNK {
            let want = frame_len(&self.input[..self.end]).unwrap_or(0);
            let len = (self.end + READ_CHUNK).max(want);
            self.input.resize(len, 0);
        }
        match self.stream.read(&mut self.input[self.end..]) {
            Ok(0) => return Ok(false),
            Ok(n) => self.end += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return Ok(true)
            }
            Err(e) => return Err(e),
        }
        let (used, close) = answer_all(store, &self.input[..self.end], &mut self.out);
        self.input.copy_within(used..self.end, 0);
        self.end -= used;
        self.closing |= close;
        Ok(true)
    }

    /// Writes what it can of `out`; `Ok(true)` once all of it is written.
    fn flush(&mut self) -> io::Result<bool> {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        Ok(true)
    }
}

/// An epoll instance, closed on drop.
struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: no pointers; the returned fd is owned by `Epoll` from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` outlives the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.0, op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        loop {
            // SAFETY: the kernel writes at most `events.len()` entries into `events`.
            let n = unsafe {
                libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as libc::c_int, -1)
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Serves `listener` forever (until an epoll call fails).
pub fn serve(listener: TcpListener, mut store: Store) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    epoll.ctl(
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        LISTENER,
    )?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut to_write: Vec<usize> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    loop {
        let n = epoll.wait(&mut events)?;
        for event in &events[..n] {
            let (flags, token) = (event.events, event.u64);
            if token == LISTENER {
                accept_all(&listener, &epoll, &mut conns, &mut free)?;
                continue;
            }
            let slot = token as usize;
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let readable = flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
            if readable && !conn.blocked && !conn.closing {
                match conn.on_readable(&mut store) {
                    Ok(true) => {}
                    Ok(false) | Err(_) => {
                        close(&mut conns, &mut free, slot);
                        continue;
                    }
                }
            }
            if (!conn.out.is_empty() || conn.closing) && !conn.queued {
                conn.queued = true;
                to_write.push(slot);
            }
        }
        for slot in to_write.drain(..) {
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            conn.queued = false;
            match conn.flush() {
                Ok(true) if conn.closing => close(&mut conns, &mut free, slot),
                Ok(true) if conn.blocked => {
                    conn.blocked = false;
                    let fd = conn.stream.as_raw_fd();
                    let interest = libc::EPOLLIN as u32;
                    epoll.ctl(libc::EPOLL_CTL_MOD, fd, interest, slot as u64)?;
                }
                Ok(true) => {}
                Ok(false) if !conn.blocked => {
                    conn.blocked = true;
                    let fd = conn.stream.as_raw_fd();
                    let interest = libc::EPOLLOUT as u32;
                    epoll.ctl(libc::EPOLL_CTL_MOD, fd, interest, slot as u64)?;
                }
                Ok(false) => {}
                Err(_) => close(&mut conns, &mut free, slot),
            }
        }
    }
}

/// Accepts every pending connection; a failed accept (out of file descriptors) is logged and
/// retried on the next turn.
fn accept_all(
    listener: &TcpListener,
    epoll: &Epoll,
    conns: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
) -> io::Result<()> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("probe: accept failed: {e}");
                return Ok(());
            }
        };
        stream.set_nonblocking(true)?;
        // Small replies must not wait for Nagle, as in kvmesh and Redis.
        stream.set_nodelay(true)?;
        let slot = free.pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        let fd = stream.as_raw_fd();
        conns[slot] = Some(Conn {
            stream,
            input: vec![0; READ_CHUNK],
            end: 0,
            out: Vec::with_capacity(READ_CHUNK),
            sent: 0,
            closing: false,
            queued: false,
            blocked: false,
        });
        epoll.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, slot as u64)?;
    }
}

/// Drops the connection in `slot` (closing its socket removes it from the epoll set).
fn close(conns: &mut [Option<Conn>], free: &mut Vec<usize>, slot: usize) {
    if conns[slot].take().is_some() {
        free.push(slot);
    }
}
