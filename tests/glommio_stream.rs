//! glommio's stream read path as kvmesh patches it (one multishot io_uring poll per stream,
//! see `vendor/README.md`), through glommio's public `TcpStream`: partial reads, reads that
//! fill the buffer, an EOF behind data, a read future dropped by a timeout, a stream dropped
//! while its poll is armed, many connections on one executor, merged poll masks, urgent data
//! (the patch's edges are in `glommio_edges.rs`). The peer is a plain blocking
//! `std::net::TcpStream` on its own thread, so no step depends on the executor under test
//! scheduling the peer. Ports are the kernel's choice (port 0).

mod glommio_support;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{net::TcpListener, timer::timeout};
use glommio_support::{answer_inverted, join, peer, read_within, run, settle, DEADLINE};
use std::{
    io::{Read, Write},
    net::TcpStream as StdStream,
    os::unix::io::AsRawFd,
    sync::mpsc,
    thread,
    time::Duration,
};

/// A short read, then data that arrives while the read waits: both are read.
#[test]
fn reads_partial_data_then_waits_on_the_same_poll() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go, step) = mpsc::channel::<()>();
        let client = thread::spawn(move || {
            let mut s = peer(addr);
            s.write_all(b"abc").unwrap();
            for round in 0..50u8 {
                step.recv().unwrap();
                s.write_all(&[round; 7]).unwrap();
            }
            let mut b = [0u8; 1];
            // Stays open until the server is done reading.
            let _ = s.read(&mut b);
        });
        let mut stream = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 3 {
            got += read_within(&mut stream, &mut buf[got..]).await;
        }
        assert_eq!(&buf[..3], b"abc");
        for round in 0..50u8 {
            // The read is polled (and finds the socket empty) before the peer is told to
            // send: `zip` polls its first future first, so the read must wait and be woken.
            let read = async {
                let mut got = 0;
                while got < 7 {
                    got += read_within(&mut stream, &mut buf[got..]).await;
                }
            };
            futures_lite::future::zip(read, async { go.send(()).unwrap() }).await;
            assert_eq!(&buf[..7], &[round; 7]);
        }
        drop(stream);
        join(client).await;
    });
}

/// Data already waiting, more than the buffer holds: the read that fills the buffer leaves
/// the rest, which no new readiness event will announce (the peer sends nothing more until
/// it is answered), and the following reads still get it.
#[test]
fn full_buffer_reads_get_the_rest_without_a_new_event() {
    const LEN: usize = 20_000;
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let (sent_all, all_sent) = mpsc::channel::<()>();
        let client = thread::spawn(move || {
            let mut s = peer(addr);
            s.write_all(&sent).unwrap();
            sent_all.send(()).unwrap();
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).unwrap();
            assert_eq!(ack, [1]);
        });
        let mut stream = listener.accept().await.unwrap();
        // Let everything arrive first, so its readiness events come before the first read.
        while all_sent.try_recv().is_err() {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        settle(stream.as_raw_fd(), |queued, _| queued == LEN).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        while got.len() < LEN {
            let n = timeout(DEADLINE, async { Ok(stream.read(&mut buf).await?) })
                .await
                .expect("the rest is read without a new event");
            assert!(n > 0, "EOF before all the data");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        stream.write_all(&[1]).await.unwrap();
        join(client).await;
    });
}

/// An EOF queued behind data: the peer sends and shuts down while the stream's poll is armed
/// and its earlier events consumed; the read that gets the data is short, and the EOF behind
/// it is returned next, and again after that, without waiting for an event that a closed peer
/// will never cause.
#[test]
fn eof_behind_data_is_returned_and_returned_again() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go, step) = mpsc::channel::<()>();
        let (sent_all, all_sent) = mpsc::channel::<()>();
        let client = thread::spawn(move || {
            let mut s = peer(addr);
            s.write_all(b"first").unwrap();
            step.recv().unwrap();
            s.write_all(b"last").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            sent_all.send(()).unwrap();
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        });
        let mut stream = listener.accept().await.unwrap();
        let mut buf = [0u8; 16];
        let mut got = 0;
        while got < 5 {
            got += read_within(&mut stream, &mut buf[got..]).await;
        }
        assert_eq!(&buf[..5], b"first");
        go.send(()).unwrap();
        // The data and the shutdown arrive, and their events are consumed, before the read.
        while all_sent.try_recv().is_err() {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        settle(stream.as_raw_fd(), |queued, revents| {
            queued == 4 && revents & libc::POLLRDHUP != 0
        })
        .await;
        let mut got = 0;
        loop {
            let n = read_within(&mut stream, &mut buf[got..]).await;
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(&buf[..got], b"last");
        for _ in 0..3 {
            let n = timeout(Duration::from_secs(5), async {
                Ok(stream.read(&mut buf).await?)
            })
            .await
            .expect("a read after EOF returns at once");
            assert_eq!(n, 0);
        }
        drop(stream);
        join(client).await;
    });
}

/// A read future dropped while it waits (a timeout, as kvmesh's idle timeout and drain do)
/// leaves the stream usable: the next read gets the data sent after the drop.
#[test]
fn a_dropped_read_leaves_the_stream_usable() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go, step) = mpsc::channel::<()>();
        let client = thread::spawn(move || {
            let mut s = peer(addr);
            for round in 0..5u8 {
                step.recv().unwrap();
                s.write_all(&[round; 5]).unwrap();
            }
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        });
        let mut stream = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        for round in 0..5u8 {
            let dropped =
                futures_lite::future::or(async { Some(stream.read(&mut buf).await) }, async {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                    None
                })
                .await;
            assert!(dropped.is_none(), "nothing was sent yet");
            go.send(()).unwrap();
            let mut got = 0;
            while got < 5 {
                got += read_within(&mut stream, &mut buf[got..]).await;
            }
            assert_eq!(&buf[..5], &[round; 5]);
        }
        drop(stream);
        join(client).await;
    });
}

/// A stream dropped while its poll is armed closes the connection: the peer sees EOF (the
/// poll, which holds the socket, was cancelled), and the executor goes on serving others.
#[test]
fn dropping_a_stream_with_an_armed_poll_closes_it() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = thread::spawn(move || {
            let mut s = peer(addr);
            let mut b = [0u8; 8];
            // EOF, not the read timeout (an error).
            s.read(&mut b).expect("EOF before the deadline")
        });
        let mut stream = listener.accept().await.unwrap();
        let mut buf = [0u8; 8];
        // Arm a wait, then drop the stream with it armed.
        let waited = futures_lite::future::or(async { Some(stream.read(&mut buf).await) }, async {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            None
        })
        .await;
        assert!(waited.is_none());
        drop(stream);
        assert_eq!(join(client).await, 0);
    });
}

/// Many connections, each a request/response conversation, on one executor: every wake-up
/// reaches its own stream.
#[test]
fn many_connections_each_get_their_own_data() {
    const CONNS: usize = 64;
    const ROUNDS: usize = 20;
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients = thread::spawn(move || {
            let mut socks: Vec<StdStream> = (0..CONNS).map(|_| peer(addr)).collect();
            for round in 0..ROUNDS {
                for (i, s) in socks.iter_mut().enumerate() {
                    s.write_all(&[(i + round) as u8; 3]).unwrap();
                }
                for (i, s) in socks.iter_mut().enumerate() {
                    let mut b = [0u8; 3];
                    s.read_exact(&mut b).unwrap();
                    assert_eq!(b, [(i + round) as u8 ^ 0xff; 3]);
                }
            }
        });
        let mut tasks = Vec::new();
        for _ in 0..CONNS {
            let stream = listener.accept().await.unwrap();
            tasks.push(glommio::spawn_local(answer_inverted(stream, || ())));
        }
        for t in tasks {
            t.await;
        }
        clients.join().unwrap();
    });
}

/// Two readiness events within one reactor turn, the first with the peer's shutdown: the
/// source keeps both masks' bits, so the EOF behind the data is not forgotten.
#[test]
fn untaken_poll_masks_are_merged_not_replaced() {
    use glommio::kvmesh_patch::merge_poll_events;
    let in_rdhup = (libc::POLLIN | libc::POLLRDHUP) as usize;
    let pollin = libc::POLLIN as usize;
    assert_eq!(merge_poll_events(None, Ok(pollin)).unwrap(), pollin);
    assert_eq!(
        merge_poll_events(Some(Ok(in_rdhup)), Ok(pollin)).unwrap(),
        in_rdhup
    );
    let err = || std::io::Error::from_raw_os_error(libc::EBADF);
    let merged = merge_poll_events(Some(Ok(pollin)), Err(err()));
    assert_eq!(merged.unwrap_err().raw_os_error(), Some(libc::EBADF));
    assert_eq!(
        merge_poll_events(Some(Err(err())), Ok(pollin)).unwrap(),
        pollin
    );
}

/// Urgent data (`MSG_OOB`) stops a TCP read short at the urgent byte, with more data behind it
/// that no new event announces. By default the multishot poll does not ask for `POLLPRI` (see
/// `kvmesh_patch::multishot_read_events`), so that data is read once the peer's next segment
/// wakes the socket; nothing is lost. With `GLOMMIO_NO_POLLIN_ONLY` set, the `POLLPRI` the poll
/// reports makes later reads call `recv` at once, and it is read without the peer sending more.
#[test]
fn data_behind_an_urgent_byte_is_read() {
    use glommio::kvmesh_patch::{kernel_at_least, switched_off, MULTISHOT_POLL_MIN_KERNEL};
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let multishot = !switched_off(std::env::var_os("GLOMMIO_NO_MULTISHOT_POLL").as_deref())
        && kernel_at_least(release.trim(), MULTISHOT_POLL_MIN_KERNEL);
    // A one-shot poll (multishot off) checks readiness when armed, so it sees the urgent byte.
    let with_pri =
        !multishot || switched_off(std::env::var_os("GLOMMIO_NO_POLLIN_ONLY").as_deref());
    run(move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent_all, all_sent) = mpsc::channel::<()>();
        let (more, send_more) = mpsc::channel::<()>();
        let client = thread::spawn(move || {
            let mut s = peer(addr);
            // "ab" normal, "c" urgent (out of band), then "xyz" normal.
            // SAFETY: a valid socket and a 3-byte buffer that outlives the call.
            let rc = unsafe { libc::send(s.as_raw_fd(), b"abc".as_ptr().cast(), 3, libc::MSG_OOB) };
            assert_eq!(rc, 3, "send MSG_OOB: {}", std::io::Error::last_os_error());
            s.write_all(b"xyz").unwrap();
            sent_all.send(()).unwrap();
            if send_more.recv().is_ok() {
                s.write_all(b"!").unwrap();
            }
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).unwrap();
        });
        let mut stream = listener.accept().await.unwrap();
        while all_sent.try_recv().is_err() {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        // FIONREAD counts only the bytes before the urgent mark.
        settle(stream.as_raw_fd(), |queued, revents| {
            queued == 2 && revents & libc::POLLPRI != 0
        })
        .await;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
        assert_eq!(got, b"ab", "a read stops at the urgent byte");
        let behind = timeout(Duration::from_millis(300), async {
            Ok(stream.read(&mut buf).await?)
        })
        .await;
        if with_pri {
            let n = behind.expect("the data after the urgent byte is read without a new event");
            got.extend_from_slice(&buf[..n]);
            drop(more);
        } else {
            assert!(
                behind.is_err(),
                "without POLLPRI, nothing announces the data yet"
            );
            more.send(()).unwrap();
        }
        while !got.ends_with(if with_pri { b"xyz" } else { b"xyz!" }) {
            let n = timeout(DEADLINE, async { Ok(stream.read(&mut buf).await?) })
                .await
                .expect("the data after the urgent byte is read");
            assert!(n > 0, "EOF before all the data");
            got.extend_from_slice(&buf[..n]);
        }
        let expected: &[u8] = if with_pri { b"abxyz" } else { b"abxyz!" };
        assert_eq!(got, expected);
        stream.write_all(&[1]).await.unwrap();
        join(client).await;
    });
}

/// The multishot poll asks for `POLLPRI` only when switched back on, and the mask the kernel
/// reports for a TCP socket's plain data wake-up (`sock_def_readable` wakes with
/// `EPOLLIN | EPOLLPRI | EPOLLRDNORM | EPOLLRDBAND`; io_uring keeps the bits asked for) then
/// does not make every later read call `recv` at once.
#[test]
fn a_plain_data_wake_up_is_not_sticky() {
    use glommio::kvmesh_patch::{multishot_read_events, sticky_events};
    let wake_up = (libc::POLLIN | libc::POLLPRI | libc::POLLRDNORM | libc::POLLRDBAND) as usize;
    let asked = |with_pri| multishot_read_events(with_pri) as usize;
    assert_eq!(asked(false), (libc::POLLIN | libc::POLLRDHUP) as usize);
    assert!(!sticky_events(wake_up & asked(false)));
    assert!(
        sticky_events(wake_up & asked(true)),
        "POLLPRI, asked for, is sticky"
    );
    assert!(sticky_events(libc::POLLRDHUP as usize));
    assert!(sticky_events(libc::POLLHUP as usize));
    assert!(sticky_events(libc::POLLERR as usize));
}
