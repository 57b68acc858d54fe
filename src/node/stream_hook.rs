//! Test hook, not a feature (compiled only in debug builds or with the `test-hooks` feature,
//! and it logs a WARN at start when enabled): with `KVMESH_TEST_STREAM_DIR=DIR` in its environment, every shard
//! of the node watches `DIR/move` and runs [`super::stream_shard`] or [`super::drop_unowned`]
//! as that file says, so an end-to-end test can drive the data plane between two real nodes
//! from an old and a new ring, without the control plane that triggers it in a cluster.
//! Without the variable nothing runs. The file (written by the test, renamed into place):
//!
//! ```text
//! id=3                                  a new id is a new request; each shard runs it once
//! action=stream                         or drop (drop_unowned under the new ring)
//! epoch=2
//! replicas=1
//! old=1=127.0.0.1:7000                  ID=HOST:PORT,... as --peers
//! new=1=127.0.0.1:7000,2=127.0.0.1:7100
//! ```
//!
//! Each shard answers in `DIR/done-ID-SHARD`: `ok` and its [`super::StreamReport`]'s fields
//! (`key=value` lines), `dropped=N`, or `error` and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use glommio::Task;

use super::{drop_unowned, stream_shard, Move};
use crate::cluster::membership::parse_peers;
use crate::node::server::ShardCtx;

/// The environment variable that enables the hook.
pub const ENV: &str = "KVMESH_TEST_STREAM_DIR";
const POLL: Duration = Duration::from_millis(20);

/// Starts the hook on this shard when [`ENV`] is set.
pub fn start(ctx: &Rc<ShardCtx>) -> Option<Task<()>> {
    let dir = PathBuf::from(std::env::var_os(ENV)?);
    if ctx.me == 0 {
        tracing::warn!(
            "{ENV} is set: the stream test hook runs streams and drops as {} says",
            dir.join("move").display()
        );
    }
    Some(glommio::spawn_local(watch(ctx.clone(), dir)))
}

async fn watch(ctx: Rc<ShardCtx>, dir: PathBuf) {
    let mut done = String::new();
    loop {
        glommio::timer::sleep(POLL).await;
        let Ok(text) = std::fs::read_to_string(dir.join("move")) else {
            continue;
        };
        let fields = parse(&text);
        let Some(id) = fields.get("id").cloned() else {
            continue;
        };
        if id == done {
            continue;
        }
        done = id.clone();
        let answer = match run(&ctx, &fields).await {
            Ok(answer) => answer,
            Err(why) => format!("error\n{why}\n"),
        };
        write(&dir, &format!("done-{id}-{}", ctx.me), &answer);
    }
}

async fn run(ctx: &Rc<ShardCtx>, fields: &BTreeMap<String, String>) -> Result<String, String> {
    let get = |k: &str| fields.get(k).ok_or_else(|| format!("no {k}="));
    let number =
        |k: &str| -> Result<u64, String> { get(k)?.parse().map_err(|e| format!("{k}: {e}")) };
    let old = parse_peers(get("old")?)?;
    let new = parse_peers(get("new")?)?;
    let replicas = number("replicas")? as usize;
    let mv =
        Move::from_members(number("epoch")?, &old, &new, replicas).map_err(|e| e.to_string())?;
    match get("action")?.as_str() {
        "stream" => {
            let r = stream_shard(ctx, &mv).await.map_err(|e| e.to_string())?;
            Ok(format!(
                "ok\nranges={}\nplanned_keys={}\nplanned_copies={}\nplanned_bytes={}\n\
                 keys_acked={}\nbytes_acked={}\nbytes_sent={}\nbatches={}\nretries={}\n\
                 refused={}\nskipped={}\n",
                r.ranges,
                r.planned.keys,
                r.planned.copies,
                r.planned.bytes,
                r.keys_acked,
                r.bytes_acked,
                r.bytes_sent,
                r.batches,
                r.retries,
                r.refused,
                r.skipped
            ))
        }
        "drop" => {
            let dropped = drop_unowned(ctx, &mv.new, replicas).await.keys;
            Ok(format!("ok\ndropped={dropped}\n"))
        }
        other => Err(format!("unknown action {other:?}")),
    }
}

fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Writes `name` in `dir` whole: a temporary file renamed into place.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(name));
    }
}
