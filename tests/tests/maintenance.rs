//! Maintenance beyond Status and Alarm: Hash, HashKV (at a revision),
//! Defragment, MoveLeader, through the `etcd-client` crate and etcdctl
//! (`endpoint hashkv`, `defrag`, `move-leader`).

use ferrocd_tests::etcdctl::run;
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;
use tonic::Code;

fn status(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn hashes_defragment_and_move_leader() {
    let member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;
    for i in 0..10 {
        c.put(format!("h/{i}"), "v", None).await.unwrap();
    }
    let at = c.hash_kv(0).await.unwrap();
    assert_eq!((at.hash_revision(), at.compact_version()), (11, -1));
    let whole = c.hash().await.unwrap().hash();
    // Same data, same hashes; a write changes the current ones, not the
    // hash at an older revision.
    assert_eq!(c.hash_kv(0).await.unwrap().hash(), at.hash());
    assert_eq!(c.hash().await.unwrap().hash(), whole);
    c.put("h/new", "v", None).await.unwrap();
    assert_ne!(c.hash_kv(0).await.unwrap().hash(), at.hash());
    assert_ne!(c.hash().await.unwrap().hash(), whole);
    assert_eq!(c.hash_kv(11).await.unwrap().hash(), at.hash());
    let h5 = c.hash_kv(5).await.unwrap();
    assert_ne!(h5.hash(), at.hash());
    assert_eq!(
        status(c.hash_kv(100).await.unwrap_err()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision".into())
    );
    c.compact(8, None).await.unwrap();
    assert_eq!(
        status(c.hash_kv(5).await.unwrap_err()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted".into())
    );
    assert_eq!(c.hash_kv(12).await.unwrap().compact_version(), 8);

    c.defragment().await.unwrap();
    assert_eq!(c.get("h/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap().count(), 11);

    let me = c.status().await.unwrap().header().unwrap().member_id();
    c.move_leader(me).await.unwrap();
    assert_eq!(
        status(c.move_leader(me + 1).await.unwrap_err()),
        (Code::FailedPrecondition, "etcdserver: bad leader transferee".into())
    );

    for name in ["etcdctl-3.4", "etcdctl-3.5"] {
        let Some(etcdctl) = require_tool(name) else { return };
        let ep = member.endpoint().trim_start_matches("http://").to_string();
        let hashkv = run(&etcdctl, &ep, &["endpoint", "hashkv", "-w", "json"], None).json();
        assert!(hashkv[0]["HashKV"]["hash"].as_u64().is_some_and(|h| h > 0), "{hashkv}");
        let defrag = run(&etcdctl, &ep, &["defrag"], None).ok();
        assert!(defrag.starts_with("Finished defragmenting etcd member"), "{defrag}");
        let moved = run(&etcdctl, &ep, &["move-leader", &format!("{me:x}")], None).ok();
        assert!(moved.contains("Leadership transferred"), "{moved}");
    }
}

/// ferrocd has no downgrade target: etcd's errors for each action.
#[tokio::test]
async fn downgrade_answers_with_etcds_errors() {
    use ferrocd::proto::etcdserverpb::downgrade_request::DowngradeAction;
    use ferrocd::proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use ferrocd::proto::etcdserverpb::DowngradeRequest;

    let member = Member::ferrocd(&[]).await;
    let mut raw = MaintenanceClient::connect(member.endpoint()).await.unwrap();
    let ask = |action: DowngradeAction, version: &str| {
        let req = DowngradeRequest { action: action as i32, version: version.into() };
        let mut raw = raw.clone();
        async move {
            let e = raw.downgrade(req).await.unwrap_err();
            (e.code(), e.message().to_string())
        }
    };
    let invalid = (Code::InvalidArgument, "etcdserver: invalid downgrade target version".to_string());
    assert_eq!(ask(DowngradeAction::Validate, "3.4.0").await, invalid);
    assert_eq!(ask(DowngradeAction::Enable, "3.4.0").await, invalid);
    assert_eq!(
        ask(DowngradeAction::Validate, "three").await,
        (Code::InvalidArgument, "etcdserver: wrong downgrade target version format".into())
    );
    assert_eq!(
        ask(DowngradeAction::Cancel, "").await,
        (Code::FailedPrecondition, "etcdserver: no inflight downgrade job".into())
    );
    let odd = raw.downgrade(DowngradeRequest { action: 9, version: "3.4.0".into() }).await.unwrap_err();
    assert_eq!((odd.code(), odd.message()), (Code::Unknown, "etcdserver: unknown method"));
}

/// etcd's runbook for a full backend: compact, defragment, disarm. The
/// backend gives the space back, and writes go on during the defragmentation.
#[tokio::test]
async fn compact_defragment_disarm_recovers_from_nospace() {
    let member = Member::ferrocd(&["--quota-backend-bytes", &(24 * 1024 * 1024).to_string()]).await;
    let mut c = member.client().await;
    let value = vec![b'v'; 4096];
    let mut full = false;
    for i in 0..20_000 {
        match c.put(format!("q/{}", i % 100), value.clone(), None).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(status(e), (Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded".into()));
                full = true;
                break;
            }
        }
    }
    assert!(full, "a 24 MiB quota fills up");
    let before = c.status().await.unwrap().db_size();
    let rev = c.get("q/0", None).await.unwrap().header().unwrap().revision();
    c.compact(rev, None).await.unwrap();

    // Writes keep coming (deletes are allowed under NOSPACE) while the
    // backend is rewritten.
    let mut writer = member.client().await;
    let writes = tokio::spawn(async move {
        for i in 0..200 {
            writer.delete(format!("gone/{i}"), None).await.unwrap();
        }
    });
    c.defragment().await.unwrap();
    writes.await.unwrap();
    let after = c.status().await.unwrap().db_size();
    assert!(after * 4 < before, "defragmenting gave space back: {before} -> {after}");

    let me = c.status().await.unwrap().header().unwrap().member_id();
    let mut options = etcd_client::AlarmOptions::new();
    options.with_member(me);
    c.alarm(etcd_client::AlarmAction::Deactivate, etcd_client::AlarmType::Nospace, Some(options)).await.unwrap();
    c.put("q/after", "ok", None).await.unwrap();
    let all = c.get("q/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(all.count(), 101, "every key survived");
    assert!(all.kvs().iter().filter(|kv| kv.key() != b"q/after").all(|kv| kv.value() == value.as_slice()));
}

/// The quota counts what the store holds for its users (keys and values of
/// every revision not yet compacted), not sled's files: a 100 MB quota takes
/// about 100 MB of values, as etcd's does, and status shows the count as
/// `dbSizeInUse`.
#[tokio::test]
async fn a_quota_takes_about_what_it_says() {
    const QUOTA: usize = 100_000_000;
    const VALUE: usize = 1_572_000;
    let member = Member::ferrocd(&["--quota-backend-bytes", &QUOTA.to_string()]).await;
    let mut c = member.client().await;
    let mut stored = 0;
    loop {
        match c.put(format!("big/{stored}"), vec![b'v'; VALUE], None).await {
            Ok(_) => stored += 1,
            Err(e) => {
                assert_eq!(status(e), (Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded".into()));
                break;
            }
        }
        assert!(stored * VALUE <= QUOTA, "{stored} values of {VALUE} bytes went past a {QUOTA}-byte quota");
    }
    assert!(stored * VALUE >= QUOTA * 9 / 10, "only {stored} values of {VALUE} bytes fit a {QUOTA}-byte quota");
    let s = c.status().await.unwrap();
    let in_use = s.raft_used_db_size() as usize;
    assert!(in_use >= stored * VALUE && in_use < stored * (VALUE + 1024), "in use {in_use} for {stored} values");
}

/// Defragment and MoveLeader answer with no header, as etcd 3.5.1's do.
#[tokio::test]
async fn defragment_and_move_leader_answer_as_etcd() {
    let Some((etcd, ferrocd)) = Member::etcd_and_ferrocd(&[]).await else { return };
    for (name, member) in [("etcd", &etcd), ("ferrocd", &ferrocd)] {
        let mut c = member.client().await;
        let me = c.status().await.unwrap().header().unwrap().member_id();
        assert!(c.defragment().await.unwrap().header().is_none(), "{name}: defragment header");
        assert!(c.move_leader(me).await.unwrap().header().is_none(), "{name}: move-leader header");
    }
}
