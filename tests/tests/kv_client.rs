//! The KV API through a client this project did not write (the `etcd-client`
//! crate): every operation, and etcd's exact error codes and messages.

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use ferrocd_tests::http::http_get;
use ferrocd_tests::member::Member;
use tonic::Code;

fn status(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn expect_err<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>, code: Code, msg: &str) {
    let (c, m) = status(r.expect_err("the request must fail"));
    assert_eq!((c, m.as_str()), (code, msg));
}

#[tokio::test]
async fn kv_operations_and_errors() {
    let member = Member::ferrocd(&["--max-txn-ops", "8", "--max-request-bytes", "65536"]).await;
    let mut c: Client = member.client().await;

    // Put / Get with revisions and prev_kv.
    let r = c.put("a", "1", None).await.unwrap();
    let rev_a = r.header().unwrap().revision();
    assert_eq!(rev_a, 2, "the first write creates revision 2");
    let r = c.put("a", "2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(r.prev_key().unwrap().value(), b"1");
    for k in ["b", "c", "d", "e"] {
        c.put(k, format!("v-{k}"), None).await.unwrap();
    }
    let g = c.get("a", None).await.unwrap();
    let kv = &g.kvs()[0];
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version(), kv.value()), (2, 3, 2, &b"2"[..]));
    assert_ne!(g.header().unwrap().cluster_id(), 0);
    assert_ne!(g.header().unwrap().member_id(), 0);
    assert!(g.header().unwrap().raft_term() >= 1);

    // Ranges: prefix, from-key, limit + more + count, sort, keys/count only, revision.
    let all = c.get("", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(all.count(), 5);
    let lim = c.get("a", Some(GetOptions::new().with_range("e").with_limit(2))).await.unwrap();
    assert_eq!((lim.kvs().len(), lim.more(), lim.count()), (2, true, 4));
    let desc = c
        .get("", Some(GetOptions::new().with_from_key().with_sort(SortTarget::Key, SortOrder::Descend).with_limit(1)))
        .await
        .unwrap();
    assert_eq!(desc.kvs()[0].key(), b"e");
    let by_mod =
        c.get("", Some(GetOptions::new().with_from_key().with_sort(SortTarget::Mod, SortOrder::Ascend))).await.unwrap();
    let mods: Vec<i64> = by_mod.kvs().iter().map(|kv| kv.mod_revision()).collect();
    assert!(mods.windows(2).all(|w| w[0] <= w[1]));
    let keys = c.get("", Some(GetOptions::new().with_from_key().with_keys_only())).await.unwrap();
    assert!(keys.kvs().iter().all(|kv| kv.value().is_empty()));
    let count = c.get("", Some(GetOptions::new().with_from_key().with_count_only())).await.unwrap();
    assert_eq!((count.count(), count.kvs().len()), (5, 0));
    let old = c.get("a", Some(GetOptions::new().with_revision(rev_a))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");
    let ser = c.get("a", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(ser.kvs()[0].value(), b"2");

    // Delete with prev_kv.
    let d = c.delete("d", Some(DeleteOptions::new().with_range("f").with_prev_key())).await.unwrap();
    assert_eq!(d.deleted(), 2);
    assert_eq!(d.prev_kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(), vec![&b"d"[..], b"e"]);
    let rev_after_delete = d.header().unwrap().revision();

    // Txn: both branches, one revision per txn.
    let t = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "2")])
        .and_then([TxnOp::put("x", "1", None), TxnOp::put("y", "1", None), TxnOp::get("x", None)])
        .or_else([TxnOp::get("a", None)]);
    let tr = c.txn(t).await.unwrap();
    assert!(tr.succeeded());
    assert_eq!(tr.header().unwrap().revision(), rev_after_delete + 1);
    match &tr.op_responses()[2] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].mod_revision(), rev_after_delete + 1),
        other => panic!("unexpected {other:?}"),
    }
    let t = Txn::new()
        .when([Compare::version("a", CompareOp::Greater, 10)])
        .and_then([TxnOp::put("z", "1", None)])
        .or_else([TxnOp::get("a", None)]);
    let tr = c.txn(t).await.unwrap();
    assert!(!tr.succeeded());
    assert!(c.get("z", None).await.unwrap().kvs().is_empty());

    // Compaction, then reads at compacted and future revisions.
    let current = c.get("a", None).await.unwrap().header().unwrap().revision();
    c.compact(rev_after_delete, None).await.unwrap();
    expect_err(
        c.get("a", Some(GetOptions::new().with_revision(rev_a))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    )
    .await;
    expect_err(
        c.get("a", Some(GetOptions::new().with_revision(current + 100))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )
    .await;
    expect_err(
        c.compact(rev_after_delete, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    )
    .await;
    expect_err(
        c.compact(current + 100, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )
    .await;

    // Request checks.
    expect_err(c.put("", "v", None).await, Code::InvalidArgument, "etcdserver: key is not provided").await;
    expect_err(c.get("", None).await, Code::InvalidArgument, "etcdserver: key is not provided").await;
    expect_err(c.put("big", vec![b'x'; 70_000], None).await, Code::InvalidArgument, "etcdserver: request is too large")
        .await;
    let many = Txn::new().and_then((0..9).map(|i| TxnOp::put(format!("m{i}"), "v", None)).collect::<Vec<_>>());
    expect_err(c.txn(many).await, Code::InvalidArgument, "etcdserver: too many operations in txn request").await;
    let dup = Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]);
    expect_err(c.txn(dup).await, Code::InvalidArgument, "etcdserver: duplicate key given in txn request").await;
    expect_err(
        c.put("leased", "v", Some(PutOptions::new().with_lease(12345))).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    )
    .await;
    expect_err(
        c.put("nothing-here", "", Some(PutOptions::new().with_ignore_value())).await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    )
    .await;
    // None of the refused writes changed anything.
    let after = c.get("", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(after.header().unwrap().revision(), current);
    assert!(c.get("m0", None).await.unwrap().kvs().is_empty());

    // Status: an etcd API semver that kube-apiserver accepts, and the raft numbers.
    let s = c.status().await.unwrap();
    assert_eq!(s.version(), "3.5.13");
    assert_eq!(s.leader(), s.header().unwrap().member_id());
    assert!(s.raft_index() >= s.raft_applied_index() && s.raft_applied_index() > 0);
    assert!(s.db_size() > 0);

    // Membership changes check the URLs first, with etcd's error.
    let (code, msg) = status(c.member_add(["http://127.0.0.1"], None).await.unwrap_err());
    assert_eq!((code, msg.as_str()), (Code::InvalidArgument, "etcdserver: given member URLs are invalid"));
}

#[tokio::test]
async fn nospace_alarm_refuses_puts_but_allows_deletes() {
    // A quota far below any real backend: the first put raises NOSPACE.
    let member = Member::ferrocd(&["--quota-backend-bytes", "1"]).await;
    let mut c = member.client().await;
    expect_err(c.put("k", "v", None).await, Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded").await;
    let alarms = c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.unwrap();
    assert_eq!(alarms.alarms().len(), 1);
    assert_eq!(alarms.alarms()[0].alarm(), etcd_client::AlarmType::Nospace);
    let status = c.status().await.unwrap();
    assert!(status.errors().iter().any(|e| e.contains("NOSPACE")), "{:?}", status.errors());
    c.delete("k", None).await.expect("deletes are allowed under NOSPACE");
    let t = Txn::new().and_then([TxnOp::put("t", "v", None)]);
    expect_err(c.txn(t).await, Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded").await;
    let grant = c.lease_grant(60, None).await;
    expect_err(grant, Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded").await;
    c.compact(1, None).await.expect("compaction is allowed under NOSPACE");
    c.get("k", None).await.expect("reads are allowed under NOSPACE");
    // /health reports it, unless excluded; readiness is not about space.
    let addr = member.endpoint().trim_start_matches("http://").to_string();
    assert_eq!(http_get(&addr, "/health").await, (503, r#"{"health":"false","reason":"ALARM NOSPACE"}"#.to_string()));
    assert_eq!(http_get(&addr, "/health?exclude=NOSPACE").await.0, 200);
    assert_eq!(http_get(&addr, "/readyz").await, (200, "ok\n".to_string()));
    // The alarm survives a restart.
    let mut member = member;
    member.restart().await;
    let mut c = member.client().await;
    let alarms = c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.unwrap();
    assert_eq!(alarms.alarms().len(), 1);
}

#[tokio::test]
async fn health_and_version_over_http() {
    let metrics_port = ferrocd_tests::ports::free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let member = Member::ferrocd(&["--listen-metrics-urls", &metrics_url]).await;
    let client_addr = member.endpoint().trim_start_matches("http://").to_string();
    for addr in [client_addr.as_str(), &format!("127.0.0.1:{metrics_port}")] {
        assert_eq!(http_get(addr, "/health").await, (200, r#"{"health":"true","reason":""}"#.to_string()));
        assert_eq!(http_get(addr, "/health?serializable=true").await.0, 200);
        assert_eq!(http_get(addr, "/livez").await, (200, "ok\n".to_string()));
        assert_eq!(http_get(addr, "/readyz").await, (200, "ok\n".to_string()));
        assert_eq!(
            http_get(addr, "/readyz?verbose").await,
            (
                200,
                "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nreadyz check passed\n"
                    .to_string()
            )
        );
        let (code, body) = http_get(addr, "/readyz?verbose&exclude=linearizable_read").await;
        assert_eq!(code, 200);
        assert!(body.contains("[+]linearizable_read excluded: ok"), "{body}");
        assert_eq!(http_get(addr, "/livez?verbose").await.1, "[+]serializable_read ok\nlivez check passed\n");
        let (code, body) = http_get(addr, "/version").await;
        assert_eq!(code, 200);
        assert!(body.contains(r#""etcdserver":"3.5.13""#), "{body}");
    }
    assert_eq!(http_get(&client_addr, "/no-such-page").await.0, 404);
}

/// Txns that only read run on a read view: same answers as any txn, the
/// revision unchanged, etcd's errors for compacted and future revisions.
#[tokio::test]
async fn read_only_txns() {
    use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
    let member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;
    c.put("r/a", "1", None).await.unwrap();
    c.put("r/a", "2", None).await.unwrap();
    c.put("r/b", "3", None).await.unwrap();
    let rev = c.get("r/a", None).await.unwrap().header().unwrap().revision();
    let txn = Txn::new()
        .when([Compare::value("r/a", CompareOp::Equal, "2")])
        .and_then([
            TxnOp::get("r/", Some(GetOptions::new().with_prefix())),
            TxnOp::txn(Txn::new().and_then([TxnOp::get("r/a", Some(GetOptions::new().with_revision(2)))])),
        ])
        .or_else([TxnOp::get("r/b", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), rev, "reading moves no revision");
    match &resp.op_responses()[..] {
        [TxnOpResponse::Get(all), TxnOpResponse::Txn(nested)] => {
            assert_eq!(all.count(), 2);
            match &nested.op_responses()[..] {
                [TxnOpResponse::Get(old)] => assert_eq!(old.kvs()[0].value(), b"1"),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    c.compact(3, None).await.unwrap();
    let at = |r: i64| Txn::new().and_then([TxnOp::get("r/a", Some(GetOptions::new().with_revision(r)))]);
    let e = c.txn(at(2)).await.unwrap_err();
    assert!(e.to_string().contains("etcdserver: mvcc: required revision has been compacted"), "{e}");
    let e = c.txn(at(rev + 10)).await.unwrap_err();
    assert!(e.to_string().contains("etcdserver: mvcc: required revision is a future revision"), "{e}");
    assert_eq!(c.get("r/a", None).await.unwrap().header().unwrap().revision(), rev, "nothing was written");
}
