//! Process set-up the executors need, and finding free loopback ports for scripts.

use std::net::TcpListener;

use anyhow::bail;

/// io_uring (glommio) refuses to start below this much lockable memory.
const MEMLOCK_NEEDED: u64 = 512 * 1024;

/// Raises the soft `RLIMIT_MEMLOCK` to the hard limit, and explains if that is still too low.
pub fn raise_memlock() -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        bail!(
            "cannot read RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
            bail!(
                "cannot raise RLIMIT_MEMLOCK: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < MEMLOCK_NEEDED {
        bail!(
            "RLIMIT_MEMLOCK is {} bytes (hard limit), but io_uring needs at least {MEMLOCK_NEEDED}: \
             raise it with `ulimit -l 512` as root",
            limit.rlim_cur
        );
    }
    Ok(())
}

/// A port `P` on 127.0.0.1 such that `P..P+count` can all be bound right now. Picked below the
/// usual ephemeral range so outgoing connections do not take them in the meantime.
pub fn free_ports(count: u16) -> anyhow::Result<u16> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let mut rng = fastrand::Rng::new();
    for _ in 0..500 {
        let base = rng.u16(10_000..32_000 - count);
        let held: Result<Vec<TcpListener>, _> = (base..base + count)
            .map(|port| TcpListener::bind(("127.0.0.1", port)))
            .collect();
        if held.is_ok() {
            return Ok(base);
        }
    }
    bail!("found no {count} consecutive free ports on 127.0.0.1 between 10000 and 32000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable() {
        let base = free_ports(3).unwrap();
        for port in base..base + 3 {
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }

    #[test]
    fn memlock_is_enough_after_raising() {
        raise_memlock().unwrap();
    }
}
