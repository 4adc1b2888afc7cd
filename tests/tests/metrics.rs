//! `/metrics`: Prometheus text on the client port and on
//! `--listen-metrics-urls`, with values that follow what the member did, and
//! only metric names that a real etcd 3.5.1 exposes too.

use std::collections::BTreeSet;

use etcd_client::{PutOptions, WatchOptions};
use ferrocd_tests::http::{http_get, samples};
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

/// Metric families named in `# TYPE` lines.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

async fn scrape(addr: &str) -> String {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test]
async fn metrics_follow_the_member_and_use_etcd_names() {
    let metrics_port = ferrocd_tests::ports::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    // The backend commits every 5 writes (never by time here).
    let member = Member::ferrocd(&[
        "--listen-metrics-urls",
        &format!("http://{metrics_addr}"),
        "--backend-batch-limit",
        "5",
        "--backend-batch-interval",
        "1h",
    ])
    .await;
    let mut c = member.client().await;
    for i in 0..25 {
        c.put(format!("m/{i}"), "v", None).await.unwrap();
    }
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("m/leased", "v", Some(PutOptions::new().with_lease(lease))).await.unwrap();
    c.put("m/bad", "v", Some(PutOptions::new().with_lease(0x404))).await.unwrap_err();
    let mut watch = c.watch("m/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(watch.message().await.unwrap().expect("created").created());

    let client_addr = member.endpoint().trim_start_matches("http://").to_string();
    for addr in [client_addr.as_str(), metrics_addr.as_str()] {
        let text = scrape(addr).await;
        let s = samples(&text);
        let v = |name: &str| *s.get(name).unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        assert_eq!(v("etcd_server_has_leader"), 1.0);
        assert_eq!(v("etcd_server_is_leader"), 1.0);
        assert_eq!(v("etcd_server_leader_changes_seen_total"), 1.0);
        assert_eq!(v(r#"etcd_server_version{server_version="3.5.13"}"#), 1.0);
        let (committed, applied) =
            (v("etcd_server_proposals_committed_total"), v("etcd_server_proposals_applied_total"));
        assert!(applied >= 27.0 && committed >= applied, "committed {committed}, applied {applied}");
        assert_eq!(v("etcd_server_proposals_pending"), 0.0);
        assert_eq!(v("etcd_server_proposals_failed_total"), 0.0);
        assert!(v("etcd_disk_wal_fsync_duration_seconds_count") >= 27.0);
        let backend_commits = v("etcd_disk_backend_commit_duration_seconds_count");
        assert!(backend_commits >= 5.0 && backend_commits < applied, "{backend_commits} backend commits");
        assert_eq!(v("etcd_debugging_mvcc_keys_total"), 26.0);
        assert_eq!(v("etcd_debugging_mvcc_watcher_total"), 1.0);
        assert_eq!(v("etcd_debugging_mvcc_slow_watcher_total"), 0.0);
        assert!(v("etcd_mvcc_db_total_size_in_bytes") > 0.0);
        assert!(v("process_resident_memory_bytes") > 1e6);
        let grpc = |kind: &str, service: &str, method: &str, code: &str| {
            v(&format!(
                r#"grpc_server_handled_total{{grpc_code="{code}",grpc_method="{method}",grpc_service="{service}",grpc_type="{kind}"}}"#
            ))
        };
        assert_eq!(grpc("unary", "etcdserverpb.KV", "Put", "OK"), 26.0);
        assert_eq!(grpc("unary", "etcdserverpb.KV", "Put", "NotFound"), 1.0);
        assert_eq!(grpc("unary", "etcdserverpb.Lease", "LeaseGrant", "OK"), 1.0);
        // As etcd's: the methods of etcdserverpb are there from the start,
        // at zero (go-grpc-prometheus pre-registers them); Lock's and
        // Election's once called.
        assert_eq!(grpc("unary", "etcdserverpb.KV", "Compact", "Unavailable"), 0.0);
        assert_eq!(grpc("server_stream", "etcdserverpb.Maintenance", "Snapshot", "OK"), 0.0);
        let observe = r#"grpc_server_started_total{grpc_method="Observe",grpc_service="v3electionpb.Election",grpc_type="server_stream"}"#;
        assert!(!s.contains_key(observe), "Election's methods appear once called, as etcd's");
        let started = r#"grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}"#;
        assert_eq!(v(started), 1.0);
        // Messages: the watch got its create request and sent "created"; a
        // refused put sends no message back.
        let msgs = |dir: &str, kind: &str, service: &str, method: &str| {
            v(&format!(
                r#"grpc_server_msg_{dir}_total{{grpc_method="{method}",grpc_service="{service}",grpc_type="{kind}"}}"#
            ))
        };
        assert_eq!(msgs("received", "bidi_stream", "etcdserverpb.Watch", "Watch"), 1.0);
        assert_eq!(msgs("sent", "bidi_stream", "etcdserverpb.Watch", "Watch"), 1.0);
        assert_eq!(msgs("received", "unary", "etcdserverpb.KV", "Put"), 27.0);
        assert_eq!(msgs("sent", "unary", "etcdserverpb.KV", "Put"), 26.0);
        // Present; counted in whole seconds, so still 0 this early.
        v("process_cpu_seconds_total");
    }
    drop(watch);

    // Every etcd_* and grpc_* family ferrocd exposes is one etcd 3.5.1 exposes too.
    // (process_* come from Prometheus's standard process collector; Go's has
    // no process_threads.)
    let Some(etcd_bin) = require_tool("etcd-3.5") else { return };
    let etcd_metrics_port = ferrocd_tests::ports::free_port();
    let etcd_metrics = format!("127.0.0.1:{etcd_metrics_port}");
    let _etcd = Member::start(etcd_bin, &["--listen-metrics-urls", &format!("http://{etcd_metrics}")]).await;
    let theirs = families(&scrape(&etcd_metrics).await);
    let ours = families(&scrape(&metrics_addr).await);
    let ours_named_like_etcd = ours.iter().filter(|f| f.starts_with("etcd_") || f.starts_with("grpc_"));
    let foreign: Vec<&String> = ours_named_like_etcd.filter(|f| !theirs.contains(*f)).collect();
    assert!(foreign.is_empty(), "metric names etcd 3.5.1 does not have: {foreign:?}");
}
