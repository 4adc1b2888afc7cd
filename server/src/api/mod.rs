//! etcd's v3 gRPC services: KV, Watch, Lease, Lock, Election, Maintenance,
//! Cluster and Auth. An RPC not built yet answers `Unimplemented` with a
//! message naming it.

mod auth;
mod call;
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
    let calls = call::CallLayer::new(&server.metrics, {
        let server = server.clone();
        move || server.is_learner()
    });
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
        .layer(calls);
    Routes::from(router)
}

/// Unknown paths: a gRPC call gets `Unimplemented`, plain HTTP a 404.
async fn not_built(uri: axum::http::Uri, headers: axum::http::HeaderMap) -> axum::response::Response {
    if !call::is_grpc(&headers) {
        return axum::response::IntoResponse::into_response((
            axum::http::StatusCode::NOT_FOUND,
            "404 page not found\n",
        ));
    }
    Status::unimplemented(format!("ferrocd: {} is not implemented yet", uri.path())).into_http()
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
