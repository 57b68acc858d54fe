//! The probe's io_uring loop: one thread, one ring, no readiness polling.
//!
//! Every connection always has one `recv` in flight (unless it is closing or holding too many
//! unsent replies) and at most one `send`. Per turn: one `io_uring_enter` submits every
//! operation queued since the last (across all connections: the batching) and waits for at
//! least one completion; each completed `recv` has its whole frames answered into the
//! connection's pending replies, which go out in one `send` as soon as none is in flight.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use super::{answer_all, frame_len, Store};

/// Bytes a fresh connection's input buffer holds, and the least room a `recv` is given.
const READ_CHUNK: usize = 16 * 1024;
/// Ring size: room for a `recv` and a `send` per connection of a benchmark, and the accept.
const ENTRIES: u32 = 1024;
/// Pending replies above which a connection is not read until its `send` completes.
const MAX_PENDING: usize = 1 << 20;
/// The accept's user data; connections use `slot << 1 | kind`.
const ACCEPT: u64 = u64::MAX;
const RECV: u64 = 0;
const SEND: u64 = 1;

struct Conn {
    stream: TcpStream,
    /// `input[..end]` is read and not answered yet; a `recv` in flight writes after it.
    input: Vec<u8>,
    end: usize,
    /// The replies a `send` in flight is writing: `sending[sent..]` is left.
    sending: Vec<u8>,
    sent: usize,
    /// Replies waiting for the `send` in flight to finish.
    pending: Vec<u8>,
    recv_in_flight: bool,
    send_in_flight: bool,
    /// A frame was refused or the peer closed: close once nothing is in flight (after the
    /// replies are sent, unless sending failed).
    closing: bool,
}

/// Serves `listener` forever (until the ring fails). `defer_taskrun`: completions are run only
/// inside this loop's `io_uring_enter` (`IORING_SETUP_DEFER_TASKRUN`); otherwise at this
/// thread's next system call's return instead of interrupting it (`COOP_TASKRUN`). Either way
/// one thread submits, as kvmesh's glommio rings are set up (see `vendor/README.md`).
pub fn serve(listener: TcpListener, mut store: Store, defer_taskrun: bool) -> io::Result<()> {
    let mut builder = IoUring::builder();
    builder.setup_single_issuer();
    if defer_taskrun {
        builder.setup_defer_taskrun();
    } else {
        builder.setup_coop_taskrun();
    }
    let mut ring: IoUring = builder.build(ENTRIES)?;
    let listen_fd = listener.as_raw_fd();
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut queued: Vec<squeue::Entry> = vec![accept(listen_fd)];
    let mut done: Vec<(u64, i32)> = Vec::new();
    loop {
        for entry in queued.drain(..) {
            // SAFETY: every buffer an entry points into belongs to a connection that stays in
            // `conns` (its heap buffers unmoved and unresized) until its operation completes.
            while unsafe { ring.submission().push(&entry) }.is_err() {
                ring.submit()?;
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (user_data, result) in done.drain(..) {
            if user_data == ACCEPT {
                queued.push(accept(listen_fd));
                if result >= 0 {
                    // SAFETY: a completed accept returns a new descriptor that nothing owns.
                    let stream = unsafe { TcpStream::from_raw_fd(result) };
                    let _ = stream.set_nodelay(true);
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    let mut conn = Conn {
                        stream,
                        input: vec![0; READ_CHUNK],
                        end: 0,
                        sending: Vec::with_capacity(READ_CHUNK),
                        sent: 0,
                        pending: Vec::with_capacity(READ_CHUNK),
                        recv_in_flight: false,
                        send_in_flight: false,
                        closing: false,
                    };
                    conn.arm(slot, &mut queued);
                    conns[slot] = Some(conn);
                }
                continue;
            }
            let slot = (user_data >> 1) as usize;
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if user_data & 1 == RECV {
                conn.recv_in_flight = false;
                if result <= 0 {
                    conn.closing = true;
                } else {
                    conn.end += result as usize;
                    let (used, close) =
                        answer_all(&mut store, &conn.input[..conn.end], &mut conn.pending);
                    conn.input.copy_within(used..conn.end, 0);
                    conn.end -= used;
                    conn.closing |= close;
                }
            } else {
                conn.send_in_flight = false;
                if result < 0 {
                    // The peer is gone: drop whatever is left.
                    conn.closing = true;
                    conn.sending.clear();
                    conn.pending.clear();
                } else {
                    conn.sent += result as usize;
                }
            }
            conn.arm(slot, &mut queued);
            if conn.closing && !conn.recv_in_flight && !conn.send_in_flight {
                conns[slot] = None;
                free.push(slot);
            }
        }
    }
}

impl Conn {
    /// Queues the `send` and the `recv` this connection should have in flight and has not.
    fn arm(&mut self, slot: usize, queued: &mut Vec<squeue::Entry>) {
        let fd = types::Fd(self.stream.as_raw_fd());
        if !self.send_in_flight {
            if self.sent == self.sending.len() {
                self.sending.clear();
                self.sent = 0;
                std::mem::swap(&mut self.sending, &mut self.pending);
            }
            if self.sent < self.sending.len() {
                let rest = &self.sending[self.sent..];
                let send = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32).build();
                queued.push(send.user_data((slot as u64) << 1 | SEND));
                self.send_in_flight = true;
            }
        }
        if !self.recv_in_flight && !self.closing && self.pending.len() < MAX_PENDING {
            if self.input.len() - self.end < READ_CHUNK {
                let want = frame_len(&self.input[..self.end]).unwrap_or(0);
                self.input.resize((self.end + READ_CHUNK).max(want), 0);
            }
            let room = &mut self.input[self.end..];
            let recv = opcode::Recv::new(fd, room.as_mut_ptr(), room.len() as u32).build();
            queued.push(recv.user_data((slot as u64) << 1 | RECV));
            self.recv_in_flight = true;
        }
    }
}

fn accept(listen_fd: RawFd) -> squeue::Entry {
    opcode::Accept::new(
        types::Fd(listen_fd),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .flags(libc::SOCK_CLOEXEC)
    .build()
    .user_data(ACCEPT)
}
