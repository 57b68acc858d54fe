//! The node's log: one line per notable event, on stderr, through `tracing`.
//!
//! The level comes from `RUST_LOG` (tracing-subscriber's `EnvFilter` syntax, e.g. `debug` or
//! `kvmesh=debug,hyper=info`); without it, `info`: start-up with the effective settings,
//! recovery, shutdown, warnings and errors. Each line carries a UTC timestamp, the level and
//! the thread (`kvmesh-shard-N` for a shard's events).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The level when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber. Call once, before the node logs anything; a second call
/// is a no-op. An unparsable `RUST_LOG` falls back to the default, with a warning.
pub fn init() {
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (
                EnvFilter::new(DEFAULT_FILTER),
                Some(format!("{spec:?}: {e}")),
            ),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_thread_names(true)
        .try_init()
        .is_ok();
    if let (true, Some(bad)) = (installed, bad) {
        tracing::warn!("ignoring RUST_LOG {bad}; logging at {DEFAULT_FILTER}");
    }
}
