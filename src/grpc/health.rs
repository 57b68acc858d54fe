//! `grpc.health.v1.Health`: `Check` and `Watch`, answered from the executor's [`Serving`] state.
//! Every service this server describes through reflection shares that one state, and so does
//! `""` (the whole server); any other name is unknown.

use futures_lite::{Stream, StreamExt};
use kvmesh_proto::health::health_check_response::ServingStatus;
use kvmesh_proto::health::{HealthCheckRequest, HealthCheckResponse};

use super::reflection;
use super::serving::{Serving, State};
use super::status::Error;

/// `Check`: SERVING or NOT_SERVING; status NOT_FOUND for an unknown service.
pub fn check(serving: &Serving, req: &HealthCheckRequest) -> Result<HealthCheckResponse, Error> {
    if !known(&req.service) {
        return Err(Error::UnknownService(req.service.clone()));
    }
    Ok(response(status_of(serving.state())))
}

/// `Watch`: the current status at once, then each change, until the client cancels. An unknown
/// service gets SERVICE_UNKNOWN (once: it never becomes known), as the protocol asks.
pub fn watch(
    serving: &Serving,
    req: &HealthCheckRequest,
) -> impl Stream<Item = HealthCheckResponse> + Send + 'static {
    let changes = if known(&req.service) {
        Some(serving.watch())
    } else {
        None
    };
    let unknown = changes.is_none();
    let first =
        futures_lite::stream::iter(unknown.then(|| response(ServingStatus::ServiceUnknown)));
    first.chain(
        futures_lite::stream::iter(changes)
            .flatten()
            .map(|state| response(status_of(state))),
    )
}

/// The health status a state reports.
pub fn status_of(state: State) -> ServingStatus {
    match state {
        State::Serving => ServingStatus::Serving,
        State::Recovering | State::Stopping => ServingStatus::NotServing,
    }
}

fn known(service: &str) -> bool {
    service.is_empty() || reflection::services().iter().any(|s| s == service)
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(service: &str) -> HealthCheckRequest {
        HealthCheckRequest {
            service: service.into(),
        }
    }

    #[test]
    fn check_follows_the_state() {
        let serving = Serving::recovering();
        let status = |s: &Serving, name| check(s, &ask(name)).map(|r| r.status());
        assert_eq!(status(&serving, ""), Ok(ServingStatus::NotServing));
        serving.set_serving();
        assert_eq!(status(&serving, ""), Ok(ServingStatus::Serving));
        assert_eq!(
            status(&serving, "distributed_cache.KvMesh"),
            Ok(ServingStatus::Serving)
        );
        serving.set_stopping();
        assert_eq!(
            status(&serving, "distributed_cache.DistributedCache"),
            Ok(ServingStatus::NotServing)
        );
        assert_eq!(
            status(&serving, "no.Such"),
            Err(Error::UnknownService("no.Such".into()))
        );
    }

    #[test]
    fn watch_streams_changes() {
        let serving = Serving::recovering();
        let mut stream = Box::pin(watch(&serving, &ask("")));
        serving.set_serving();
        let next = |s: &mut std::pin::Pin<Box<_>>| {
            futures_lite::future::block_on(StreamExt::next(s))
                .map(|r: HealthCheckResponse| r.status())
        };
        assert_eq!(next(&mut stream), Some(ServingStatus::NotServing));
        assert_eq!(next(&mut stream), Some(ServingStatus::Serving));
        drop(serving);
        assert_eq!(next(&mut stream), None);
        let serving = Serving::recovering();
        let mut unknown = Box::pin(watch(&serving, &ask("no.Such")));
        assert_eq!(next(&mut unknown), Some(ServingStatus::ServiceUnknown));
        assert_eq!(next(&mut unknown), None);
    }
}
