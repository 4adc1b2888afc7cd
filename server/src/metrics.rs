//! Prometheus metrics under etcd's names (so etcd dashboards and alerts
//! work), served as `/metrics`. Counters and histograms are updated where
//! things happen; gauges of current state are read at scrape time.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::ETCD_API_VERSION;

pub struct Metrics {
    registry: Registry,
    /// Held while a scrape refreshes and renders, so scrapes do not interleave.
    pub scrape: parking_lot::Mutex<()>,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub db_total_size: IntGauge,
    pub db_in_use: IntGauge,
    pub keys_total: IntGauge,
    pub watchers: IntGauge,
    pub slow_watchers: IntGauge,
    /// go-grpc-prometheus's server metrics, as etcd exports them.
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub grpc_msg_received: IntCounterVec,
    pub grpc_msg_sent: IntCounterVec,
    /// etcd's peer network metrics (by peer member ID in hex).
    pub peers_active: IntGaugeVec,
    pub peers_disconnected: IntCounterVec,
    pub peer_sent_bytes: IntCounterVec,
    pub peer_received_bytes: IntCounterVec,
    pub peer_round_trip: HistogramVec,
    pub snapshot_send_success: IntCounterVec,
    pub snapshot_send_failures: IntCounterVec,
    pub snapshot_receive_success: IntCounterVec,
    pub snapshot_receive_failures: IntCounterVec,
    pub snapshot_send_seconds: HistogramVec,
    pub snapshot_receive_seconds: HistogramVec,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

/// etcd's disk latency buckets: 1 ms to ~8 s, doubling.
fn disk_histogram(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(exponential_buckets(0.001, 2.0, 14)?))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let version = IntGaugeVec::new(
            Opts::new(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
            ),
            &["server_version"],
        )?;
        version.with_label_values(&[ETCD_API_VERSION]).set(1);
        r.register(Box::new(version))?;
        Ok(Metrics {
            peers_active: {
                let g = IntGaugeVec::new(
                    Opts::new("etcd_network_active_peers", "The current number of active peer connections."),
                    &["Local", "Remote"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            peers_disconnected: counter_vec(
                &r,
                "etcd_network_disconnected_peers_total",
                "The total number of disconnected peers.",
                &["Local", "Remote"],
            )?,
            peer_sent_bytes: counter_vec(
                &r,
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            )?,
            peer_received_bytes: counter_vec(
                &r,
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            )?,
            // etcd's buckets: 0.1 ms to ~3.3 s, doubling.
            peer_round_trip: histogram_vec(
                &r,
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
                &["To"],
                exponential_buckets(0.0001, 2.0, 16)?,
            )?,
            snapshot_send_success: counter_vec(
                &r,
                "etcd_network_snapshot_send_success",
                "Total number of successful snapshot sends",
                &["To"],
            )?,
            snapshot_send_failures: counter_vec(
                &r,
                "etcd_network_snapshot_send_failures",
                "Total number of snapshot send failures",
                &["To"],
            )?,
            snapshot_receive_success: counter_vec(
                &r,
                "etcd_network_snapshot_receive_success",
                "Total number of successful snapshot receives",
                &["From"],
            )?,
            snapshot_receive_failures: counter_vec(
                &r,
                "etcd_network_snapshot_receive_failures",
                "Total number of snapshot receive failures",
                &["From"],
            )?,
            // etcd's buckets: 0.1 s to ~27 min, doubling.
            snapshot_send_seconds: histogram_vec(
                &r,
                "etcd_network_snapshot_send_total_duration_seconds",
                "Total latency distributions of v3 snapshot sends",
                &["To"],
                exponential_buckets(0.1, 2.0, 14)?,
            )?,
            snapshot_receive_seconds: histogram_vec(
                &r,
                "etcd_network_snapshot_receive_total_duration_seconds",
                "Total latency distributions of v3 snapshot receives",
                &["From"],
                exponential_buckets(0.1, 2.0, 14)?,
            )?,
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            )?,
            is_leader: gauge(
                &r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            )?,
            leader_changes: counter(&r, "etcd_server_leader_changes_seen_total", "The number of leader changes seen.")?,
            proposals_committed: gauge(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            )?,
            proposals_applied: gauge(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            )?,
            proposals_pending: gauge(
                &r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            )?,
            proposals_failed: counter(
                &r,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            )?,
            wal_fsync: disk_histogram(
                &r,
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
            )?,
            backend_commit: disk_histogram(
                &r,
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
            )?,
            db_total_size: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            )?,
            db_in_use: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            )?,
            keys_total: gauge(&r, "etcd_debugging_mvcc_keys_total", "Total number of keys.")?,
            watchers: gauge(&r, "etcd_debugging_mvcc_watcher_total", "Total number of watchers.")?,
            slow_watchers: gauge(
                &r,
                "etcd_debugging_mvcc_slow_watcher_total",
                "Total number of unsynced slow watchers.",
            )?,
            grpc_started: counter_vec(
                &r,
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &["grpc_type", "grpc_service", "grpc_method"],
            )?,
            grpc_handled: counter_vec(
                &r,
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            )?,
            grpc_msg_received: counter_vec(
                &r,
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &["grpc_type", "grpc_service", "grpc_method"],
            )?,
            grpc_msg_sent: counter_vec(
                &r,
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &["grpc_type", "grpc_service", "grpc_method"],
            )?,
            registry: r,
            scrape: parking_lot::Mutex::new(()),
        })
    }

    /// The text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
