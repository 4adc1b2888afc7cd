//! etcd's v3 gRPC services: KV, Watch, Lease, Lock, Election, Maintenance,
//! Cluster and Auth. An RPC not built yet answers `Unimplemented` with a
//! message naming it.

mod auth;
mod cluster;
mod concurrency;
mod election;
mod grpc_metrics;
mod kv;
mod lease;
mod lock;
mod maintenance;
pub mod response_budget;
mod validate;
mod watch;

pub use concurrency::prefix_end;

use std::sync::Arc;

use tonic::service::Routes;
use tonic::Status;

use crate::api::response_budget::ClientConn;
use crate::auth::Credentials;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::server::EtcdServer;
use crate::tls::ConnInfo;

/// gRPC's allowance above `--max-request-bytes`, as etcd sets it, so that
/// requests in between get etcd's own "request is too large" error. etcd's
/// watch server splits fragmented responses at this limit too.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

pub fn routes(server: Arc<EtcdServer>) -> Routes {
    let max_recv = server.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let server_for_http = server.clone();
    let metrics = server.metrics.clone();
    let learner_server = server.clone();
    let router = Routes::new(KvServer::new(kv::KvService::new(server.clone())).max_decoding_message_size(max_recv))
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService::new(server.clone()))
                .max_decoding_message_size(max_recv),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService::new(server.clone())).max_decoding_message_size(max_recv),
        )
        .add_service(WatchServer::new(watch::WatchService::new(server.clone())).max_decoding_message_size(max_recv))
        .add_service(LeaseServer::new(lease::LeaseService::new(server.clone())).max_decoding_message_size(max_recv))
        .add_service(LockServer::new(lock::LockService::new(server.clone())))
        .add_service(ElectionServer::new(election::ElectionService::new(server.clone())))
        .add_service(AuthServer::new(auth::AuthService::new(server)).max_decoding_message_size(max_recv))
        .into_axum_router()
        // etcd serves its HTTP endpoints on the client port too.
        .merge(crate::http::router(server_for_http))
        .fallback(not_built)
        .layer(axum::middleware::map_response(oversized_as_grpc_go))
        .layer(axum::middleware::map_response(response_budget::hold_until_sent))
        .layer(axum::middleware::from_fn_with_state(learner_server, refuse_on_learner))
        // Outermost, so it records the code the client gets.
        .layer(axum::middleware::from_fn_with_state(metrics, grpc_metrics::record));
    Routes::from(router)
}

/// tonic refuses a message over the receive limit with `OutOfRange`;
/// grpc-go (so etcd) says `ResourceExhausted`. Same refusal, etcd's code.
async fn oversized_as_grpc_go(mut resp: axum::response::Response) -> axum::response::Response {
    let headers = resp.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(b"Error,%20decoded%20message%20length%20too%20large"));
    if too_large {
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
    resp
}

/// Unknown paths: a gRPC call gets `Unimplemented`, plain HTTP a 404.
async fn not_built(uri: axum::http::Uri, headers: axum::http::HeaderMap) -> axum::response::Response {
    let grpc = headers.get("content-type").is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return axum::response::IntoResponse::into_response((
            axum::http::StatusCode::NOT_FOUND,
            "404 page not found\n",
        ));
    }
    Status::unimplemented(format!("ferrocd: {} is not implemented yet", uri.path())).into_http()
}

/// What a learner serves, as etcd's: Status, Snapshot and serializable
/// Range (which the KV service checks); anything else is refused, so that
/// clients go to a voting member.
const LEARNER_SERVES: [&str; 3] =
    ["/etcdserverpb.Maintenance/Status", "/etcdserverpb.Maintenance/Snapshot", "/etcdserverpb.KV/Range"];

async fn refuse_on_learner(
    axum::extract::State(server): axum::extract::State<Arc<EtcdServer>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path();
    let grpc =
        path.starts_with("/etcdserverpb.") || path.starts_with("/v3lockpb.") || path.starts_with("/v3electionpb.");
    if grpc && !LEARNER_SERVES.contains(&path) && server.is_learner() {
        return Status::from(EtcdError::NotSupportedForLearner).into_http();
    }
    next.run(req).await
}

/// The common name of the verified client certificate of the connection
/// a request came on (kept only with --client-cert-auth).
pub(crate) fn cert_user<T>(req: &tonic::Request<T>) -> Option<&Arc<str>> {
    req.extensions().get::<ClientConn<ConnInfo>>().and_then(|c| c.transport.common_name.as_ref())
}

/// Who a request says it is from.
pub(crate) fn credentials<T>(req: &tonic::Request<T>) -> Credentials<'_> {
    Credentials { metadata: req.metadata(), cert_user: cert_user(req).map(|c| &**c) }
}

/// The response variant a request kind always applies to.
fn expect<R, T>(resp: R, pick: fn(R) -> Option<T>) -> Result<T, Status> {
    pick(resp).ok_or_else(|| EtcdError::Internal("unexpected apply result".into()).into())
}
