//! What a node checks and adjusts in its environment before any executor starts.

use std::net::{SocketAddr, TcpListener};

/// glommio registers its I/O buffers with io_uring, which needs this much locked memory.
const MEMLOCK_NEEDED: u64 = 512 * 1024;

/// Raises the soft `RLIMIT_MEMLOCK` to the hard limit, and explains if that is still too low
/// for glommio.
pub fn raise_memlock() -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(format!(
            "cannot read RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        ));
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
            return Err(format!(
                "cannot raise RLIMIT_MEMLOCK: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < MEMLOCK_NEEDED {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} bytes (hard limit), but io_uring needs at least {MEMLOCK_NEEDED}: \
             raise it with `ulimit -l 512` as root or LimitMEMLOCK= in a systemd unit",
            limit.rlim_cur
        ));
    }
    Ok(())
}

/// Fails with a clear message if any of `addrs` is already taken.
///
/// glommio's listeners always set SO_REUSEPORT, which would let a second node silently share
/// ports with a running one and split its traffic. A plain bind, without SO_REUSEPORT, fails on
/// a port that anyone holds, so it is tried first for every port the node needs.
///
/// A port that only connections of a previous run still hold (TIME_WAIT: a node that was
/// killed closed its peers' connections first) fails that bind too, but nothing listens on it,
/// and glommio's SO_REUSEPORT bind succeeds there; so a refused connection clears the port.
pub fn check_ports_free(addrs: &[(SocketAddr, String)]) -> Result<(), String> {
    for (addr, role) in addrs {
        if let Err(e) = TcpListener::bind(addr) {
            if e.kind() == std::io::ErrorKind::AddrInUse && released_soon(*addr) {
                continue;
            }
            return Err(if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "{addr} ({role}) is already in use, perhaps by another kvmesh node; \
                     choose free ports with --listen (a node needs PORT and PORT+1..PORT+shards) \
                     and --grpc"
                )
            } else {
                format!("cannot listen on {addr} ({role}): {e}")
            });
        }
    }
    Ok(())
}

/// How long a port may take to be released by a process that is exiting: a killed node's
/// listeners stay open until the kernel has torn down its io_uring, a moment after it died.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// True when nothing listens on `addr`, now or within [`RELEASE_WAIT`].
fn released_soon(addr: SocketAddr) -> bool {
    let give_up = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        if nothing_listens(addr) {
            return true;
        }
        if std::time::Instant::now() >= give_up {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// True when a connection to `addr` is refused: no listener holds it.
fn nothing_listens(addr: SocketAddr) -> bool {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    matches!(
        std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_millis(500)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// The cores this process may run on: the online cores within its affinity mask, so `taskset`
/// and cgroup cpusets are respected.
pub fn usable_cpus() -> Result<Vec<usize>, String> {
    let online =
        glommio::CpuSet::online().map_err(|e| format!("cannot read the online CPU set: {e}"))?;
    // SAFETY: cpu_set_t is plain data, valid when zeroed.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; `mask` is valid for the size we pass.
    let have_mask =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&mask), &mut mask) } == 0;
    let allowed = |cpu: usize| {
        // SAFETY: CPU_ISSET reads the mask we own, at an index below CPU_SETSIZE.
        !have_mask || (cpu < libc::CPU_SETSIZE as usize && unsafe { libc::CPU_ISSET(cpu, &mask) })
    };
    let mut cpus: Vec<usize> = online
        .into_iter()
        .map(|l| l.cpu)
        .filter(|&cpu| allowed(cpu))
        .collect();
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err("no online core is in this process's CPU affinity mask".to_string());
    }
    Ok(cpus)
}
