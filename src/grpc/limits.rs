//! The node's connection limits on the gRPC port: a connection over `--max-connections` gets
//! `RESOURCE_EXHAUSTED` on its calls and then a GOAWAY; one with no call for `--idle-timeout`
//! gets a GOAWAY.

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use kvmesh_net::hyper_io::{Io, LocalExec};

/// How long a refused gRPC connection is served (every call answered `RESOURCE_EXHAUSTED`)
/// before it is closed with a GOAWAY.
pub const REFUSED_GRPC_GRACE: Duration = Duration::from_millis(500);

/// Serves a refused connection: every call it sends within [`REFUSED_GRPC_GRACE`] is answered
/// `RESOURCE_EXHAUSTED` with `why`, then the connection is closed.
pub async fn refuse(stream: TcpStream, why: String) {
    let service = hyper::service::service_fn(move |_req| {
        let status = tonic::Status::resource_exhausted(why.clone());
        async move { Ok::<_, Infallible>(status.into_http::<tonic::body::Body>()) }
    });
    let conn = hyper::server::conn::http2::Builder::new(LocalExec)
        .serve_connection(Io::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let ended = futures_lite::future::or(async { Some(conn.as_mut().await) }, async {
        glommio::timer::sleep(REFUSED_GRPC_GRACE).await;
        None
    })
    .await;
    if ended.is_none() {
        conn.as_mut().graceful_shutdown();
        // The calls it still has are answered at once; a peer that stops reading is dropped.
        let _ = glommio::timer::timeout(REFUSED_GRPC_GRACE, async {
            let _ = conn.await;
            Ok(())
        })
        .await;
    }
}

/// A connection's calls in flight and when the last one ended, for `--idle-timeout`.
#[derive(Default)]
pub struct Activity {
    in_flight: Cell<usize>,
    last: Cell<Option<Instant>>,
}

/// Counts one call in flight until dropped (also when the call is cancelled).
pub struct Call(Rc<Activity>);

impl Activity {
    pub fn begin(self: &Rc<Self>) -> Call {
        self.in_flight.set(self.in_flight.get() + 1);
        Call(self.clone())
    }

    /// Completes once the connection has had no call in flight for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        let opened = Instant::now();
        loop {
            let since = self.last.get().unwrap_or(opened);
            let quiet = since.elapsed();
            if self.in_flight.get() == 0 && quiet >= idle {
                return;
            }
            glommio::timer::sleep(idle.saturating_sub(quiet).max(idle / 10)).await;
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
        self.0.last.set(Some(Instant::now()));
    }
}
