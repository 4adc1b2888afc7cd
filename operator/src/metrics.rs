//! The operator's own Prometheus metrics, served on `/metrics` with
//! `/healthz`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::crd::EtcdClusterStatus;
use crate::names::Names;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    duration: HistogramVec,
    actions: IntCounterVec,
    ready: IntGaugeVec,
    members: IntGaugeVec,
    available: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "ferrocd_operator_reconciles_total",
                "Reconciles by outcome (acted, waiting, idle, retry, error).",
            ),
            &["outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("ferrocd_operator_reconcile_duration_seconds", "Time one reconcile took.")
                .buckets(prometheus::exponential_buckets(0.005, 2.0, 12)?),
            &[],
        )?;
        let actions = IntCounterVec::new(
            Opts::new(
                "ferrocd_operator_actions_total",
                "Steps taken, by reason (MemberAdded, MemberRemoved, LeaderMoved…).",
            ),
            &["reason"],
        )?;
        let cluster = ["namespace", "cluster"];
        let ready = IntGaugeVec::new(Opts::new("ferrocd_operator_ready_members", "Healthy voting members."), &cluster)?;
        let members = IntGaugeVec::new(
            Opts::new("ferrocd_operator_members", "Members by role (voter, learner)."),
            &["namespace", "cluster", "role"],
        )?;
        let available =
            IntGaugeVec::new(Opts::new("ferrocd_operator_cluster_available", "1 when a quorum is healthy."), &cluster)?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(actions.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(available.clone()))?;
        Ok(Metrics { registry, reconciles, duration, actions, ready, members, available })
    }

    pub fn reconcile(&self, outcome: &str) {
        self.reconciles.with_label_values(&[outcome]).inc();
    }

    pub fn reconciled(&self, took: Duration) {
        self.duration.with_label_values::<&str>(&[]).observe(took.as_secs_f64());
    }

    pub fn action(&self, reason: &str) {
        self.actions.with_label_values(&[reason]).inc();
    }

    pub fn observe_cluster(&self, names: &Names, s: &EtcdClusterStatus) {
        let c = [names.namespace.as_str(), names.cluster.as_str()];
        self.ready.with_label_values(&c).set(s.ready_members.into());
        let learners = s.members.iter().filter(|m| m.learner).count();
        for (role, n) in [("voter", s.members.len() - learners), ("learner", learners)] {
            self.members.with_label_values(&[c[0], c[1], role]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let available = s.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True");
        self.available.with_label_values(&c).set(available.into());
    }

    fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Serves `/metrics` and `/healthz` until the process ends.
    pub async fn serve(self, address: SocketAddr) -> std::io::Result<()> {
        let app = Router::new()
            .route("/metrics", get(move || async move { self.render() }))
            .route("/healthz", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(address).await?;
        axum::serve(listener, app).await
    }
}
