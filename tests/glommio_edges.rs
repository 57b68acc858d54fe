//! The edges of kvmesh's glommio patch (see `vendor/README.md`): the kernel it needs, polls
//! the kernel ends when the completion queue is full, cancellations of reaped polls, the
//! environment switches, and preemption timers kept across executor turns. The ordinary read
//! path is in `glommio_stream.rs`.

mod glommio_support;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{net::TcpListener, timer::timeout, LocalExecutorBuilder, Placement};
use glommio_support::{answer_inverted_all, held_peers, join, peer, DEADLINE};
use std::{
    io::{Read, Write},
    net::TcpStream as StdStream,
    sync::mpsc,
    thread,
    time::Duration,
};

/// The multishot poll is used only on kernels from 6.1 on; release strings as `uname -r`
/// prints them.
#[test]
fn multishot_poll_needs_kernel_6_1() {
    use glommio::kvmesh_patch::{kernel_at_least, MULTISHOT_POLL_MIN_KERNEL as MIN};
    for new_enough in ["6.1.0", "6.18.0-1-amd64", "6.1", "7.0.0-rc1", "10.0"] {
        assert!(kernel_at_least(new_enough, MIN), "{new_enough}");
    }
    for too_old in [
        "6.0.19",
        "5.15.0-91-generic",
        "5.13",
        "4.19.0",
        "",
        "linux",
        "6",
    ] {
        assert!(!kernel_at_least(too_old, MIN), "{too_old}");
    }
}

/// A completion queue far too small for the connections (ring depth 4, so 8 completions): 64
/// peers write while the executor's thread is blocked, so their wake-ups overflow the queue
/// and the kernel ends their multishot polls. Every conversation still completes (each read
/// re-arms its poll), and the ended polls are counted.
#[test]
fn polls_ended_by_a_full_completion_queue_are_rearmed() {
    use glommio::kvmesh_patch::{kernel_at_least, multishot_polls_ended, switched_off};
    const CONNS: usize = 64;
    const ROUNDS: usize = 4;
    let ended_before = multishot_polls_ended();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .ring_depth(4)
        .spawn(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (block, blocked) = mpsc::channel::<()>();
            let (written, all_written) = mpsc::channel::<()>();
            let clients = thread::spawn(move || {
                let mut socks: Vec<StdStream> = (0..CONNS).map(|_| peer(addr)).collect();
                for round in 0..ROUNDS {
                    blocked.recv().unwrap();
                    for (i, s) in socks.iter_mut().enumerate() {
                        s.write_all(&[(i + round) as u8; 3]).unwrap();
                    }
                    written.send(()).unwrap();
                    for (i, s) in socks.iter_mut().enumerate() {
                        let mut b = [0u8; 3];
                        s.read_exact(&mut b).unwrap();
                        assert_eq!(b, [(i + round) as u8 ^ 0xff; 3]);
                    }
                }
            });
            let (tasks, handled) = answer_inverted_all(&listener, CONNS).await;
            for round in 1..=ROUNDS {
                // Block the executor's thread while every peer writes: all 64 wake-ups are
                // posted before the reactor reaps any of them.
                block.send(()).unwrap();
                all_written.recv_timeout(DEADLINE).unwrap();
                thread::sleep(Duration::from_millis(20));
                let start = std::time::Instant::now();
                while handled.get() < CONNS * round {
                    assert!(start.elapsed() < DEADLINE, "round {round} stalled");
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
            }
            for t in tasks {
                t.await;
            }
            join(clients).await;
        })
        .expect("executor starts");
    handle.join().expect("executor thread");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let multishot = !switched_off(std::env::var_os("GLOMMIO_NO_MULTISHOT_POLL").as_deref())
        && kernel_at_least(
            release.trim(),
            glommio::kvmesh_patch::MULTISHOT_POLL_MIN_KERNEL,
        );
    if multishot {
        assert!(
            multishot_polls_ended() > ended_before,
            "no multishot poll was ended by the full completion queue"
        );
    }
}

/// Streams dropped after a full completion queue made the kernel end their polls but before
/// the reactor reaped the final completions: each drop queues a cancellation for a source id
/// that the reaping then frees and the reactor may hand to a new request at once. Those
/// stale cancellations must not hit the new requests: a fresh set of connections accepted
/// and served afterwards all complete. (A regression test for the path only: on 6.18 here it
/// passed before `consume_source` dropped such cancellations too; the race needs the reused
/// id to go to a request that is still pending when the stale cancellation is submitted.)
#[test]
fn cancellations_of_reaped_polls_do_not_hit_new_requests() {
    const CONNS: usize = 64;
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .ring_depth(4)
        .spawn(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let peers = held_peers(
                addr,
                CONNS,
                |_| b"x".to_vec(),
                move |mut first| {
                    for s in first.iter_mut() {
                        let mut b = [0u8; 1];
                        // Closed with "x" unread: a reset rather than an EOF.
                        match s.read(&mut b) {
                            Ok(0) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                            other => panic!("the dropped stream is not closed: {other:?}"),
                        }
                    }
                    let mut second: Vec<StdStream> = (0..CONNS).map(|_| peer(addr)).collect();
                    for (i, s) in second.iter_mut().enumerate() {
                        s.write_all(&[i as u8]).unwrap();
                    }
                    for (i, s) in second.iter_mut().enumerate() {
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).unwrap();
                        assert_eq!(b, [i as u8 ^ 0xff]);
                    }
                },
            );
            let mut first = Vec::new();
            for _ in 0..CONNS {
                first.push(listener.accept().await.unwrap());
            }
            peers.release();
            thread::sleep(Duration::from_millis(20));
            // No await since the block: the final completions are not reaped yet.
            drop(first);
            let mut tasks = Vec::new();
            for _ in 0..CONNS {
                let accepted = timeout(DEADLINE, async { listener.accept().await });
                let mut stream = accepted.await.expect("accept");
                tasks.push(glommio::spawn_local(async move {
                    let mut b = [0u8; 1];
                    let read = async { Ok(stream.read_exact(&mut b).await?) };
                    timeout(DEADLINE, read).await.expect("read");
                    stream.write_all(&[b[0] ^ 0xff]).await.expect("write");
                }));
            }
            for t in tasks {
                t.await;
            }
            peers.join().await;
        })
        .expect("executor starts");
    handle.join().expect("executor thread");
}

/// The environment switches turn a patch off when set to anything but `0` or empty.
#[test]
fn env_switches_ignore_zero_and_empty() {
    use glommio::kvmesh_patch::switched_off;
    use std::ffi::OsStr;
    assert!(!switched_off(None));
    assert!(!switched_off(Some(OsStr::new(""))));
    assert!(!switched_off(Some(OsStr::new("0"))));
    assert!(switched_off(Some(OsStr::new("1"))));
    assert!(switched_off(Some(OsStr::new("yes"))));
}

/// A patch that is on by default (`GLOMMIO_DEFER_TASKRUN`) is turned off only by `0`.
#[test]
fn a_default_on_switch_is_off_only_at_zero() {
    use glommio::kvmesh_patch::on_unless_zero;
    use std::ffi::OsStr;
    assert!(on_unless_zero(None));
    assert!(on_unless_zero(Some(OsStr::new(""))));
    assert!(on_unless_zero(Some(OsStr::new("1"))));
    assert!(!on_unless_zero(Some(OsStr::new("0"))));
}

/// `Reactor::wait` keeps an armed latency preemption timer only while it fires within
/// [half a period, a period] from now: never later than a new one would, never so soon that a
/// task queue gets less than half its period (`kvmesh_patch::keep_latency_timer`).
#[test]
fn a_latency_timer_is_kept_only_while_it_fires_within_a_period() {
    use glommio::kvmesh_patch::keep_latency_timer;
    use std::time::Instant;
    let now = Instant::now();
    let period = Duration::from_millis(100);
    let ms = Duration::from_millis;
    assert!(keep_latency_timer(now + period, now, period));
    assert!(keep_latency_timer(now + period / 2, now, period));
    assert!(
        !keep_latency_timer(now + period / 2 - ms(1), now, period),
        "too soon"
    );
    assert!(
        !keep_latency_timer(now + period + ms(1), now, period),
        "later than a new one"
    );
    assert!(
        !keep_latency_timer(now + ms(200), now, ms(10)),
        "the period shrank"
    );
}

/// A task that never yields by itself is still told to (`need_preempt`), period after period,
/// while the executor turns many times in between and keeps its preemption timers across those
/// turns: a timer cancelled and not re-armed, or one never re-armed after it fired, would leave
/// `need_preempt` false and this test spinning until its deadline.
#[test]
fn a_busy_task_queue_is_told_to_yield_every_period() {
    use std::time::Instant;
    const PERIOD: Duration = Duration::from_millis(20);
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(PERIOD)
        .spawn(|| async {
            for _ in 0..10 {
                // Many short turns, as a busy node has between two preemptions.
                for _ in 0..50 {
                    glommio::executor().yield_task_queue_now().await;
                }
                let start = Instant::now();
                while !glommio::executor().need_preempt() {
                    assert!(start.elapsed() < DEADLINE, "never told to yield");
                    std::hint::spin_loop();
                }
                glommio::executor().yield_task_queue_now().await;
            }
        })
        .expect("executor starts");
    handle.join().expect("executor thread");
}

/// Whether this process posts the throughput preemption timer's wake-up with
/// `IORING_OP_MSG_RING` (opt-in: the switch is set and the kernel is new enough).
fn msg_ring_preempt() -> bool {
    use glommio::kvmesh_patch::{kernel_at_least, switched_off, MSG_RING_MIN_KERNEL};
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    switched_off(std::env::var_os("GLOMMIO_MSG_RING_PREEMPT").as_deref())
        && kernel_at_least(release.trim(), MSG_RING_MIN_KERNEL)
}

/// The throughput preemption timer (it fires after `ring_depth` completions on the main ring)
/// posts its message to the latency ring with `IORING_OP_MSG_RING`, where the reactor reaps it:
/// an executor with a ring depth of 4 ping-pongs bytes between two of its own streams. A
/// malformed entry or a wrong ring descriptor posts nothing there. The patch is opt-in: run
/// with `GLOMMIO_MSG_RING_PREEMPT=1` to check it (without, this checks the `eventfd` path runs).
#[test]
fn the_throughput_timer_posts_to_the_latency_ring() {
    use glommio::{kvmesh_patch::throughput_preemption_messages, net::TcpStream};
    let before = throughput_preemption_messages();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .ring_depth(4)
        .spawn(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = TcpStream::connect(addr).await.unwrap();
            let mut server = listener.accept().await.unwrap();
            let echo = glommio::spawn_local(async move {
                let mut b = [0u8; 1];
                while server.read_exact(&mut b).await.is_ok() {
                    if server.write_all(&b).await.is_err() {
                        break;
                    }
                }
            });
            for round in 0..1_000u32 {
                let mut b = [round as u8];
                client.write_all(&b).await.unwrap();
                client.read_exact(&mut b).await.unwrap();
                assert_eq!(b, [round as u8]);
            }
            drop(client);
            echo.await;
        })
        .expect("executor starts");
    handle.join().expect("executor thread");
    if msg_ring_preempt() {
        assert!(
            throughput_preemption_messages() > before,
            "no message reached the latency ring"
        );
    }
}

/// The throughput preemption timer posts with `IORING_OP_MSG_RING` only on kernels from 5.18 on.
#[test]
fn msg_ring_needs_kernel_5_18() {
    use glommio::kvmesh_patch::{kernel_at_least, MSG_RING_MIN_KERNEL as MIN};
    for new_enough in ["5.18.0", "6.18.44-fc-v669", "6.1"] {
        assert!(kernel_at_least(new_enough, MIN), "{new_enough}");
    }
    for too_old in ["5.17.15", "5.15.0-91-generic", "4.19.0"] {
        assert!(!kernel_at_least(too_old, MIN), "{too_old}");
    }
}
