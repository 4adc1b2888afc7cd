//! etcd's flags and environment variables, and the no-flag default start.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, Txn, TxnOp};
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::ferrocd_bin;

#[tokio::test]
async fn etcd_environment_variables_are_read() {
    let member =
        Member::start_with_env(ferrocd_bin(), &[], &[("ETCD_MAX_TXN_OPS", "2"), ("ETCD_QUOTA_BACKEND_BYTES", "1")])
            .await;
    let mut c = member.client().await;
    let three =
        Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("b", "1", None), TxnOp::put("c", "1", None)]);
    let err = c.txn(three).await.expect_err("ETCD_MAX_TXN_OPS=2");
    assert!(err.to_string().contains("too many operations in txn request"), "{err}");
    let status = c.status().await.expect("status");
    assert_eq!(status.db_size_quota(), 1);
}

#[tokio::test]
async fn flags_win_over_environment() {
    let member = Member::start_with_env(ferrocd_bin(), &["--max-txn-ops", "3"], &[("ETCD_MAX_TXN_OPS", "2")]).await;
    let mut c = member.client().await;
    let three =
        Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("b", "1", None), TxnOp::put("c", "1", None)]);
    c.txn(three).await.expect("--max-txn-ops 3 wins over ETCD_MAX_TXN_OPS=2");
}

#[tokio::test]
async fn bad_flags_are_refused_with_a_message() {
    for args in [
        &["--listen-client-urls", "localhost:2379"][..],
        &["--election-timeout", "100"],
        &["--initial-cluster", "someone-else=http://127.0.0.1:2380"],
        &["--snapshot-count", "many"],
        &["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"],
        &["--auto-compaction-retention", "soon"],
    ] {
        let out = Command::new(ferrocd_bin()).args(args).output().expect("run ferrocd");
        assert!(!out.status.success(), "{args:?} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error") || stderr.contains("invalid"), "{args:?}: {stderr}");
    }
}

/// With no flags at all, ferrocd is a member named "default" with data dir
/// `default.etcd`, serving clients on 127.0.0.1:2379, as etcd is.
#[tokio::test]
async fn no_flags_start_like_etcd() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let log = std::fs::File::create(cwd.path().join("log")).expect("log");
    let mut child = Command::new(ferrocd_bin())
        .current_dir(cwd.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ferrocd");
    let deadline = Instant::now() + Duration::from_secs(30);
    let log_text = || std::fs::read_to_string(cwd.path().join("log")).unwrap_or_default();
    while !log_text().contains("ready to serve client requests") {
        assert!(child.try_wait().expect("wait").is_none(), "ferrocd exited:\n{}", log_text());
        assert!(Instant::now() < deadline, "not ready:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = Client::connect(["http://127.0.0.1:2379"], None).await.expect("connect to the default port");
    let members = c.member_list().await.expect("member list");
    assert_eq!(members.members()[0].name(), "default");
    assert_eq!(members.members()[0].peer_urls(), ["http://localhost:2380"]);
    assert!(cwd.path().join("default.etcd/member/wal").is_dir());
    assert!(cwd.path().join("default.etcd/member/snap").is_dir());
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "SIGTERM must exit cleanly: {status}\n{}", log_text());
}

/// Member and cluster IDs come from the flags exactly as etcd computes them:
/// etcd 3.5.1 started with a peer URL and token reports the IDs ferrocd
/// derives from the same, and ferrocd reports what it derives.
#[tokio::test]
async fn member_and_cluster_ids_are_etcds_for_the_same_flags() {
    let token = ["--initial-cluster-token", "ids-test-token"];
    let Some((etcd, ferrocd)) = Member::etcd_and_ferrocd(&token).await else { return };
    for (name, member) in [("etcd", &etcd), ("ferrocd", &ferrocd)] {
        let mut c = member.client().await;
        let list = c.member_list().await.expect("member list");
        let m = &list.members()[0];
        let flags = ferrocd::config::InitialMember { name: m.name().into(), peer_urls: m.peer_urls().to_vec() };
        let id = ferrocd::ids::member_id(&flags, token[1]);
        assert_eq!(m.id(), id, "{name}: member ID of {:?}", m.peer_urls());
        let header = list.header().expect("header");
        assert_eq!((header.member_id(), header.cluster_id()), (id, ferrocd::ids::cluster_id(&[id])), "{name}");
    }
}
