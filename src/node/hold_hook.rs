//! Test hook, not a feature (compiled only in debug builds; not with the `test-hooks` feature,
//! so a release bench build runs no per-request hold check):
//! with `KVMESH_TEST_HOLD_DIR=DIR` in its environment, a request whose ops for another shard
//! of this node or for another node include a key beginning with `held-` waits after it was
//! planned (its ring chosen, its place in the in-flight fence taken, its local ops run) and
//! before it sends them, until `DIR/release` exists. It writes `DIR/holding` when it begins to wait. An end-to-end test can so keep a
//! write planned under one topology epoch in flight across a membership change (see `fence`).
//! Without the variable nothing waits; a node with it logs a WARN at start.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use kvmesh_proto::wire::Op;

/// The environment variable that enables the hook.
pub const ENV: &str = "KVMESH_TEST_HOLD_DIR";
const POLL: Duration = Duration::from_millis(20);

fn dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os(ENV).map(PathBuf::from);
        if let Some(dir) = &dir {
            tracing::warn!(
                "{ENV} is set: requests with a key beginning with held- wait for {}",
                dir.join("release").display()
            );
        }
        dir
    })
    .as_ref()
}

/// Logs the WARN at start when the hook is on.
pub fn start() {
    let _ = dir();
}

/// Waits as the module docs say if the hook is on and `ops` hold a `held-` key.
pub async fn hold<'a>(mut ops: impl Iterator<Item = &'a Op>) {
    let Some(dir) = dir() else {
        return;
    };
    if !ops.any(|op| op.key.starts_with(b"held-")) {
        return;
    }
    let _ = std::fs::write(dir.join("holding"), b"");
    while !dir.join("release").exists() {
        glommio::timer::sleep(POLL).await;
    }
}

/// Waits as the module docs say before a drop pass, if the hook is on.
pub async fn hold_drop() {
    let Some(dir) = dir() else {
        return;
    };
    while dir.join("hold-drop").exists() {
        let _ = std::fs::write(dir.join("drop-held"), b"");
        glommio::timer::sleep(POLL).await;
    }
}

/// Whether hint delivery waits (see the module docs).
pub fn holds_hints() -> bool {
    dir().is_some_and(|dir| dir.join("hold-hints").exists())
}
