//! Plain HTTP endpoints, on the client port and on `--listen-metrics-urls`:
//! `/health` (etcd's JSON), `/livez` and `/readyz` (Kubernetes-style checks
//! with `?verbose` and `?exclude=`), `/version` and `/metrics`
//! (Prometheus text format, etcd's metric names).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
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
    m.has_leader.set(server.has_leader() as i64);
    m.is_leader.set(server.is_leader() as i64);
    // A counter kept by the node thread; catch the Prometheus one up.
    m.leader_changes.inc_by(status.leader_changes().saturating_sub(m.leader_changes.get()));
    m.proposals_committed.set(status.commit_index() as i64);
    m.proposals_applied.set(status.applied_index() as i64);
    m.proposals_pending.set(server.wait.len() as i64);
    let db_size = server.store.db_size() as i64;
    m.db_total_size.set(db_size);
    // What the quota counts: the keys and values held, not sled's files.
    m.db_in_use.set(server.store.held_bytes() as i64);
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

/// `/health`: etcd's JSON. Unhealthy without a leader, with an active
/// alarm (unless `?exclude=<ALARM>`), or when a linearizable read fails
/// (a local read with `?serializable=true`).
async fn health(State(server): State<Arc<EtcdServer>>, RawQuery(query): RawQuery) -> Response {
    let q = Query::parse(query.as_deref());
    let reason = health_problem(&server, &q).await;
    let (code, body) = match reason {
        None => (StatusCode::OK, r#"{"health":"true","reason":""}"#.to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!(r#"{{"health":"false","reason":"{reason}"}}"#)),
    };
    (code, [("content-type", "application/json")], body).into_response()
}

async fn health_problem(server: &EtcdServer, q: &Query) -> Option<String> {
    if !server.has_leader() {
        return Some("RAFT NO LEADER".into());
    }
    for a in server.alarms.list() {
        let name = AlarmType::try_from(a.alarm).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
        if !q.exclude.iter().any(|e| e == name) {
            return Some(format!("ALARM {name}"));
        }
    }
    let check = if q.serializable { Check::SerializableRead } else { Check::LinearizableRead };
    check.run(server).await.err().map(|e| format!("{}: {e}", check.name()))
}

/// The checks behind `/livez` and `/readyz`, with etcd's names.
#[derive(Debug, Clone, Copy)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
        }
    }

    async fn run(self, server: &EtcdServer) -> Result<(), String> {
        match self {
            Check::DataCorruption if server.alarms.is_active(AlarmType::Corrupt) => {
                Err("alarm activated: CORRUPT".into())
            }
            Check::DataCorruption => Ok(()),
            Check::LinearizableRead => {
                server.raft_barrier().await.map_err(|e| e.to_string())?;
                Check::SerializableRead.local_read(server)
            }
            Check::SerializableRead => self.local_read(server),
        }
    }

    fn local_read(self, server: &EtcdServer) -> Result<(), String> {
        let read = server.store.read();
        read.range(KeyRange::new(b"health", b""), RangeOptions { limit: 1, ..Default::default() })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `?verbose`, `?exclude=<check>` (repeatable), `?serializable=true`.
#[derive(Debug, Default)]
struct Query {
    verbose: bool,
    serializable: bool,
    exclude: Vec<String>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        let mut q = Query::default();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "verbose" => q.verbose = v != "false",
                "serializable" => q.serializable = v == "true",
                "exclude" => q.exclude.push(v.to_string()),
                _ => {}
            }
        }
        q
    }
}

/// Kubernetes-style probe output, as etcd's: "ok", or with `?verbose` (and
/// always on failure) one `[+]`/`[-]` line per check and a verdict.
async fn probe(server: &EtcdServer, kind: &str, checks: &[Check], q: Query) -> Response {
    let mut lines = Vec::new();
    let mut failed = false;
    for check in checks {
        let name = check.name();
        if q.exclude.iter().any(|e| e == name) {
            lines.push(format!("[+]{name} excluded: ok"));
            continue;
        }
        match check.run(server).await {
            Ok(()) => lines.push(format!("[+]{name} ok")),
            Err(reason) => {
                failed = true;
                lines.push(format!("[-]{name} failed: {reason}"));
            }
        }
    }
    let unknown: Vec<&str> =
        q.exclude.iter().map(String::as_str).filter(|e| !checks.iter().any(|c| c.name() == *e)).collect();
    if !unknown.is_empty() {
        lines.push(format!("warn: some health checks cannot be excluded: no matches for {}", unknown.join(", ")));
    }
    let (code, body) = match (failed, q.verbose) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n{kind} check failed\n", lines.join("\n"))),
        (false, true) => (StatusCode::OK, format!("{}\n{kind} check passed\n", lines.join("\n"))),
        (false, false) => (StatusCode::OK, "ok\n".to_string()),
    };
    (code, body).into_response()
}

async fn livez(State(server): State<Arc<EtcdServer>>, RawQuery(query): RawQuery) -> Response {
    probe(&server, "livez", &[Check::SerializableRead], Query::parse(query.as_deref())).await
}

async fn readyz(State(server): State<Arc<EtcdServer>>, RawQuery(query): RawQuery) -> Response {
    let checks = [Check::DataCorruption, Check::SerializableRead, Check::LinearizableRead];
    probe(&server, "readyz", &checks, Query::parse(query.as_deref())).await
}
