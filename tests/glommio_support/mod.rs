//! What the glommio stream tests share: an executor per test, a blocking peer, waiting on the
//! peer's thread and on the kernel's view of a socket.
#![allow(dead_code)]

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{
    net::{TcpListener, TcpStream},
    timer::timeout,
    LocalExecutorBuilder, Placement,
};
use std::{
    cell::Cell,
    io::Write,
    net::{SocketAddr, TcpStream as StdStream},
    rc::Rc,
    sync::mpsc,
    thread,
    time::Duration,
};

/// Generous: these run beside whole-workspace builds on a shared two-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn run<F, T>(fut: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(fut)
        .expect("executor starts")
        .join()
        .expect("executor thread")
}

pub fn peer(addr: SocketAddr) -> StdStream {
    let s = StdStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    s
}

/// `n` peers of one listener, connected on a thread of their own, that write only when
/// [`HeldPeers::release`]d: so the server can accept them all and arm their polls first, and
/// their data then arrives at once.
pub struct HeldPeers {
    release: mpsc::Sender<()>,
    written: mpsc::Receiver<()>,
    thread: thread::JoinHandle<()>,
}

/// Connects `n` peers to `addr`; once released, peer `i` writes `message(i)`, then `rest` runs
/// on all of them (on the peers' thread).
pub fn held_peers(
    addr: SocketAddr,
    n: usize,
    message: impl Fn(usize) -> Vec<u8> + Send + 'static,
    rest: impl FnOnce(Vec<StdStream>) + Send + 'static,
) -> HeldPeers {
    let (release, released) = mpsc::channel::<()>();
    let (wrote, written) = mpsc::channel::<()>();
    let thread = thread::spawn(move || {
        let mut peers: Vec<StdStream> = (0..n).map(|_| peer(addr)).collect();
        released.recv().expect("released");
        for (i, s) in peers.iter_mut().enumerate() {
            s.write_all(&message(i)).expect("write");
        }
        wrote.send(()).expect("tell the test");
        rest(peers);
    });
    HeldPeers {
        release,
        written,
        thread,
    }
}

impl HeldPeers {
    /// Lets every peer write its message; returns once all have (over loopback each write
    /// queues its wake-up before it returns). Blocks the executor's thread meanwhile.
    pub fn release(&self) {
        self.release.send(()).expect("peers' thread");
        self.written
            .recv_timeout(DEADLINE)
            .expect("every peer wrote");
    }

    /// Waits for the peers' thread (see [`join`]).
    pub async fn join(self) {
        join(self.thread).await
    }
}

/// One read of `stream` into `buf`, within [`DEADLINE`].
pub async fn read_within(stream: &mut TcpStream, buf: &mut [u8]) -> usize {
    timeout(DEADLINE, async { Ok(stream.read(buf).await?) })
        .await
        .expect("a read within the deadline")
}

/// Answers each 3-byte message on `stream` with its bytes inverted, calling `answered` after
/// each, until the peer closes the stream between messages.
pub async fn answer_inverted(mut stream: TcpStream, answered: impl Fn()) {
    let mut buf = [0u8; 3];
    loop {
        let mut got = 0;
        while got < 3 {
            let n = read_within(&mut stream, &mut buf[got..]).await;
            if n == 0 {
                assert_eq!(got, 0, "EOF inside a message");
                return;
            }
            got += n;
        }
        for b in &mut buf {
            *b ^= 0xff;
        }
        stream.write_all(&buf).await.unwrap();
        answered();
    }
}

/// Accepts `n` connections on `listener`, each answered by [`answer_inverted`] in a task of its
/// own; returns the tasks and how many messages have been answered, across them, so far.
pub async fn answer_inverted_all(
    listener: &TcpListener,
    n: usize,
) -> (Vec<glommio::Task<()>>, Rc<Cell<usize>>) {
    let handled = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let stream = listener.accept().await.expect("accept");
        let handled = handled.clone();
        tasks.push(glommio::spawn_local(answer_inverted(stream, move || {
            handled.set(handled.get() + 1)
        })));
    }
    (tasks, handled)
}

/// Waits for the peer's thread while the executor keeps turning: a stream dropped with its
/// poll armed closes its socket at the reactor's next turn, when the poll's cancellation is
/// submitted, so blocking the executor's thread on the peer would keep the socket open.
pub async fn join<T>(peer: thread::JoinHandle<T>) -> T {
    let start = std::time::Instant::now();
    while !peer.is_finished() && start.elapsed() < DEADLINE * 2 {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    peer.join().expect("peer thread")
}

/// Waits until the kernel's view of `fd` satisfies `ready(bytes queued (FIONREAD), poll(2)
/// mask)`, then lets the executor turn once more: by then every readiness event of what
/// arrived is queued, and the timer turn posts and reaps it (both syscalls run the socket's
/// pending io_uring task work; with `IORING_SETUP_DEFER_TASKRUN` the reactor's entry does).
/// Replaces fixed sleeps, which on a loaded machine may end too early.
pub async fn settle(fd: std::os::unix::io::RawFd, ready: impl Fn(usize, i16) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
        assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLPRI | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
        if ready(queued as usize, pfd.revents) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the socket never got ready: {queued} bytes, revents {:#x}",
            pfd.revents
        );
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    glommio::timer::sleep(Duration::from_millis(1)).await;
}
