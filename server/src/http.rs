//! Plain HTTP endpoints, on the client port and on `--listen-metrics-urls`:
//! `/health` (etcd's JSON), `/livez`, `/readyz` and `/version`.
//! Prometheus `/metrics` is not served yet.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::config::ETCD_API_VERSION;
use crate::mvcc::{KeyRange, KvRead, RangeOptions};
use crate::proto::etcdserverpb::AlarmType;
use crate::server::EtcdServer;

pub fn router(server: Arc<EtcdServer>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .with_state(server)
}

async fn version() -> Response {
    let body = format!(
        r#"{{"etcdserver":"{ETCD_API_VERSION}","etcdcluster":"3.5.0","ferrocd":"{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    ([("content-type", "application/json")], body).into_response()
}

/// Why the member cannot serve, or None when it can: no leader, an active
/// alarm, or a read that fails.
async fn problem(server: &EtcdServer, linearizable: bool) -> Option<String> {
    if server.node.status().leader() == 0 {
        return Some("RAFT NO LEADER".into());
    }
    if server.alarms.is_active(AlarmType::Nospace) {
        return Some("ALARM NOSPACE".into());
    }
    if linearizable {
        if let Err(e) = server.linearizable_barrier().await {
            return Some(format!("RAFT READ INDEX FAILED: {e}"));
        }
    }
    let read = server.store.read();
    read.range(KeyRange::new(b"health", b""), RangeOptions { limit: 1, ..Default::default() })
        .err()
        .map(|e| format!("BACKEND READ FAILED: {e}"))
}

async fn health(State(server): State<Arc<EtcdServer>>) -> Response {
    let (code, body) = match problem(&server, true).await {
        None => (StatusCode::OK, r#"{"health":"true","reason":""}"#.to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!(r#"{{"health":"false","reason":"{reason}"}}"#)),
    };
    (code, [("content-type", "application/json")], body).into_response()
}

async fn livez(State(server): State<Arc<EtcdServer>>) -> Response {
    probe(server.store.read().range(KeyRange::new(b"livez", b""), RangeOptions::default()).err().map(|e| e.to_string()))
}

async fn readyz(State(server): State<Arc<EtcdServer>>) -> Response {
    probe(problem(&server, true).await)
}

fn probe(problem: Option<String>) -> Response {
    match problem {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(p) => (StatusCode::SERVICE_UNAVAILABLE, format!("{p}\n")).into_response(),
    }
}
