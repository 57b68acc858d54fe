//! kvmesh patch (see `vendor/README.md`): the pure rules of the multishot-poll patch, public
//! (hidden from the docs) only so that kvmesh's tests (`tests/glommio_stream.rs`) can check
//! them; glommio's own unit tests need dev-dependencies that kvmesh's lock file lacks.

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
};

static MULTISHOT_POLLS_ENDED: AtomicU64 = AtomicU64::new(0);

/// How many multishot polls the kernel ended by itself in this process (each is re-armed by
/// the stream's next read that finds the socket empty: a new source, an SQE, a completion).
/// The usual cause is a full completion queue: from 6.x on, a multishot completion that does
/// not fit ends the poll instead of going to the overflow list. Many ended polls mean the
/// executors' rings are too small for the connections they serve (`ring_depth`).
pub fn multishot_polls_ended() -> u64 {
    MULTISHOT_POLLS_ENDED.load(Ordering::Relaxed)
}

pub(crate) fn count_multishot_poll_ended() {
    MULTISHOT_POLLS_ENDED.fetch_add(1, Ordering::Relaxed);
}

/// The result a multishot poll's source holds after one more `IORING_CQE_F_MORE` completion
/// (`new`), given the one its reader has not taken yet (`untaken`). Poll masks are merged, so
/// one event never hides another's bits: a socket woken first with `POLLIN | POLLRDHUP` (a FIN)
/// and then with `POLLIN` (the data's own wake-up) within one reactor turn keeps `POLLRDHUP`,
/// the only announcement of an EOF queued behind data. An error replaces the mask, and a mask
/// replaces an untaken error (the error is then over: the poll is still armed).
pub fn merge_poll_events(
    untaken: Option<io::Result<usize>>,
    new: io::Result<usize>,
) -> io::Result<usize> {
    match (untaken, new) {
        (Some(Ok(a)), Ok(b)) => Ok(a | b),
        (_, new) => new,
    }
}

/// The oldest kernel the multishot poll is used on. Multishot polls exist since 5.13, but
/// before 6.1 (without "io_uring: fix tw losing poll events" and the poll-refs rework) several
/// wake-ups racing for the same task work could lose one, and the multishot path, unlike the
/// one-shot one, never re-checks readiness by itself: a lost wake-up would stall a connection.
pub const MULTISHOT_POLL_MIN_KERNEL: (u32, u32) = (6, 1);

/// The oldest kernel on which the throughput preemption timer posts to the latency ring with
/// `IORING_OP_MSG_RING` (added in 5.18) instead of writing to its `eventfd`, which io_uring
/// hands to an `iou-wrk` thread (an `eventfd` cannot be written without blocking as io_uring
/// sees it). Opt-in: `GLOMMIO_MSG_RING_PREEMPT` (any value but `0` or empty), see `vendor/README.md`.
pub const MSG_RING_MIN_KERNEL: (u32, u32) = (5, 18);

static THROUGHPUT_PREEMPTION_MESSAGES: AtomicU64 = AtomicU64::new(0);

/// How many times in this process a throughput preemption timer's `IORING_OP_MSG_RING` reached
/// the latency ring (counted when the reactor reaps it; see [`MSG_RING_MIN_KERNEL`]). Stays 0
/// with the `eventfd` wake-up.
pub fn throughput_preemption_messages() -> u64 {
    THROUGHPUT_PREEMPTION_MESSAGES.load(Ordering::Relaxed)
}

pub(crate) fn count_throughput_preemption_message() {
    THROUGHPUT_PREEMPTION_MESSAGES.fetch_add(1, Ordering::Relaxed);
}

/// Whether a kernel release string (`uname -r`, e.g. `6.18.0-1-amd64`, `5.15.0`) is at least
/// `major.minor`. An unparsable release counts as too old.
pub fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// The running kernel's release (`uname(2)`), or `None` if the call fails.
pub(crate) fn kernel_release() -> Option<String> {
    // SAFETY: `uname` fills the zeroed struct it is given; its fields are NUL-terminated.
    unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return None;
        }
        let release = std::ffi::CStr::from_ptr(uts.release.as_ptr());
        Some(release.to_string_lossy().into_owned())
    }
}

/// Whether an environment switch's value (`GLOMMIO_NO_MULTISHOT_POLL`,
/// `GLOMMIO_NO_COOP_TASKRUN`) turns its patch off: set to anything but `0` or the empty string.
pub fn switched_off(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether the environment sets opt-out switch `name` (`GLOMMIO_NO_...`), by
/// [`switched_off`]'s rule.
pub(crate) fn set_by_env(name: &str) -> bool {
    switched_off(std::env::var_os(name).as_deref())
}

/// Whether a patch that is on by default (`GLOMMIO_DEFER_TASKRUN`) is on, given its switch's
/// value: unless the switch is set to `0`. Unset or empty leaves it on.
pub fn on_unless_zero(value: Option<&std::ffi::OsStr>) -> bool {
    !matches!(value, Some(v) if v == "0")
}

/// [`on_unless_zero`] for the environment variable `name`.
pub(crate) fn on_unless_zero_in_env(name: &str) -> bool {
    on_unless_zero(std::env::var_os(name).as_deref())
}

/// The readiness events a stream's multishot poll asks for, besides `POLLERR`, `POLLHUP` and
/// `POLLNVAL`: `POLLIN | POLLRDHUP`, and `POLLPRI` only if `with_pri`.
///
/// Why not `POLLPRI` by default: io_uring reports the wake-up's own mask when the socket's
/// wait queue is woken with one (masked by the events asked for), and a TCP socket's data
/// wake-up (`sock_def_readable`) always carries `EPOLLPRI`, urgent data or not. Asked for,
/// `POLLPRI` was in every completion, so every read of a stream called `recv` at once
/// ([`sticky_events`]): one `recv` that found nothing per request at pipeline 1. Without it, a
/// read stopped short at an urgent byte (`MSG_OOB`, which kvmesh's protocol never sends) leaves
/// the data behind that byte until the peer's next segment wakes the socket.
/// `GLOMMIO_NO_POLLIN_ONLY` (any value but `0` or empty) asks for `POLLPRI` again.
pub fn multishot_read_events(with_pri: bool) -> libc::c_short {
    let events = libc::POLLIN | libc::POLLRDHUP;
    if with_pri {
        events | libc::POLLPRI
    } else {
        events
    }
}

/// Whether a multishot poll's event mask makes every later read of the stream call `recv` at
/// once: the peer's shutdown, a hang-up, an error, or urgent data (`POLLPRI`, only reported
/// when asked for: [`multishot_read_events`]). An EOF may then wait behind the data a short
/// read left, or a read may stop short at the urgent byte, and no event announces what follows.
pub fn sticky_events(mask: usize) -> bool {
    const STICKY: libc::c_short = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLPRI;
    mask & STICKY as usize != 0
}

/// Whether `Reactor::wait` keeps an armed latency preemption timer that fires at `deadline`,
/// now that the executor's preemption period is `preempt`, instead of cancelling it and
/// arming a new one that fires at `now + preempt`: when it fires no later than the new one
/// would, and no earlier than half a period from now. A task queue then runs for at least
/// half its period and never longer than a full one before it is told to yield, and a busy
/// executor re-arms the timer about once per half period instead of at every turn (every
/// few requests at pipeline 1: a `TIMEOUT`, an `ASYNC_CANCEL` and an hrtimer each).
pub fn keep_latency_timer(
    deadline: std::time::Instant,
    now: std::time::Instant,
    preempt: std::time::Duration,
) -> bool {
    deadline <= now + preempt && deadline >= now + preempt / 2
}

static DEFERRING_RINGS: AtomicU64 = AtomicU64::new(0);

/// How many rings in this process were set up with `IORING_SETUP_DEFER_TASKRUN` (by default
/// one per executor, its main ring, unless `GLOMMIO_DEFER_TASKRUN=0` or the kernel refused the
/// flag), so that tests and benchmarks can tell which mode they measured.
pub fn deferring_rings() -> u64 {
    DEFERRING_RINGS.load(Ordering::Relaxed)
}

pub(crate) fn count_deferring_ring() {
    DEFERRING_RINGS.fetch_add(1, Ordering::Relaxed);
}

/// The most deferred task-work items the kernel runs in one `io_uring_enter` with
/// `IORING_ENTER_GETEVENTS` that waits for no completion (`IO_LOCAL_TW_DEFAULT_MAX`, Linux
/// 6.10 on; earlier kernels run them all). It clears `IORING_SQ_TASKRUN` before it runs them;
/// the kernels read (upstream, with this limit) set it again when they stop at the limit with
/// work left, so entering again after a full batch is a safeguard for kernels that do not.
pub const DEFERRED_TASK_WORK_PER_ENTER: u32 = 20;

/// Whether the reactor enters the ring again right away after an `io_uring_enter` that ran
/// deferred task work and posted `posted` completions: when the kernel may have stopped at
/// its limit ([`DEFERRED_TASK_WORK_PER_ENTER`]). A socket poll's item posts one completion,
/// so fewer completions than the limit mean the queue was emptied (an item that posted none
/// can hide others; they then wait for the next flagged item, or for the reactor's next sleep,
/// after which it enters once more whether or not the flag is set).
pub fn deferred_task_work_may_remain(posted: u32) -> bool {
    posted >= DEFERRED_TASK_WORK_PER_ENTER
}
