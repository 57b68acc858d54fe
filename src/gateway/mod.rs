//! `kvmesh gateway`: the gRPC front-end (both services, health, reflection) as a standalone
//! process that holds no data. Every request goes to the owning node and shard over the wire
//! protocol ([`remote`]); the services themselves are `crate::grpc`'s, the same as in a node.
//!
//! Thread model: `--threads` glommio executors, unpinned, each accepting on the `--grpc` port
//! (SO_REUSEPORT) with its own front-end, health state and pool of wire clients; they share
//! nothing. Health answers SERVING from start to SIGINT/SIGTERM, then NOT_SERVING; whether the
//! node answers shows per call (UNAVAILABLE when it cannot be reached).
//!
//! - [`config`]: settings and the `--peers` list (pure);
//! - [`remote`]: the backend that forwards over the wire protocol.

pub mod config;
mod remote;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

use crate::grpc::{Frontend, Serving};
pub use config::GatewayConfig;
use remote::RemoteBackend;

/// How often an executor checks whether the gateway was asked to stop.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long the executors may take to bind their port.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Starts the gateway and blocks until SIGINT or SIGTERM stops it.
pub fn run(config: GatewayConfig) -> anyhow::Result<()> {
    config.validate().map_err(|e| anyhow!(e))?;
    crate::logging::init();
    crate::node::raise_memlock().map_err(|e| anyhow!(e))?;
    crate::node::check_ports_free(&[(config.grpc, "the gateway's gRPC port (--grpc)".into())])
        .map_err(|e| anyhow!(e))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
    let config = Arc::new(config);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut executors = Vec::with_capacity(config.executors);
    for i in 0..config.executors {
        let (config, ready, stop) = (config.clone(), ready_tx.clone(), stop.clone());
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("kvmesh-gateway-{i}"))
            .spawn(move || serve(i, config, ready, stop))
            .map_err(|e| {
                anyhow!(
                    "cannot start the gateway's executor {i}: {e}. kvmesh runs on glommio, which \
                     needs io_uring (Linux 5.8 or later)"
                )
            })?;
        executors.push(handle);
    }
    drop(ready_tx);
    for _ in 0..config.executors {
        match ready_rx.recv_timeout(START_DEADLINE) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!(e),
            Err(_) => bail!("the gateway's executors did not start within {START_DEADLINE:?}"),
        }
    }
    let peers: Vec<String> = config
        .peers
        .iter()
        .map(|p| format!("node {} at {}", p.id, p.addr))
        .collect();
    tracing::info!(
        "gateway ready: gRPC {}, {} thread(s), forwarding to {}",
        config.grpc,
        config.executors,
        peers.join(", ")
    );
    for handle in executors {
        handle
            .join()
            .map_err(|e| anyhow!("a gateway executor failed: {e}"))?;
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// One executor: accept gRPC connections and forward their calls until `stop`.
async fn serve(
    i: usize,
    config: Arc<GatewayConfig>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: Arc<AtomicBool>,
) {
    let listener = match TcpListener::bind(config.grpc) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "gateway thread {i} cannot listen on {}: {e}",
                config.grpc
            )));
            return;
        }
    };
    let serving = Serving::recovering();
    let front = Frontend::new(
        format!("gateway thread {i}"),
        config.grpc_max_message,
        serving.clone(),
    );
    front.attach(std::rc::Rc::new(RemoteBackend::new(
        config.peers.clone(),
        config.timeout,
    )));
    serving.set_serving();
    let _accepting = glommio::spawn_local(crate::grpc::accept_loop(listener, front));
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    serving.set_stopping();
}
