//! Plain HTTP endpoints, on the client port and on `--listen-metrics-urls`:
//! `/health` (etcd's JSON), `/livez`, `/readyz`, `/version` and `/metrics`
//! (Prometheus text format, etcd's metric names).

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
        .route("/metrics", get(metrics))
        .with_state(server)
}

async fn metrics(State(server): State<Arc<EtcdServer>>) -> Response {
    let m = &server.metrics;
    let _scrape = m.scrape.lock();
    let status = server.node.status();
    m.has_leader.set((status.leader() != 0) as i64);
    m.is_leader.set(server.is_leader() as i64);
    // A counter kept by the node thread; catch the Prometheus one up.
    m.leader_changes.inc_by(status.leader_changes().saturating_sub(m.leader_changes.get()));
    m.proposals_committed.set(status.commit_index() as i64);
    m.proposals_applied.set(status.applied_index() as i64);
    m.proposals_pending.set(server.wait.len() as i64);
    let db_size = server.store.db_size() as i64;
    // sled does not report free pages inside its files: all of it counts as in use.
    m.db_total_size.set(db_size);
    m.db_in_use.set(db_size);
    m.keys_total.set(server.store.key_count() as i64);
    m.watchers.set(server.watch_hub.watcher_count() as i64);
    m.slow_watchers.set(server.watch_hub.unsynced_count() as i64);
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], m.render()).into_response()
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
