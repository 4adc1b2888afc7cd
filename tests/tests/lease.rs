//! Leases through the `etcd-client` crate: grant (chosen or given ID, the
//! minimum TTL, etcd's errors), keys attached by put, time-to-live with keys,
//! the lease list, keepalive, revoke (keys gone in one revision), expiry when
//! keepalives stop, and remaining TTLs kept across restarts. A differential
//! part checks the same scripted requests against etcd 3.5.1.

use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, WatchOptions};
use ferrocd_tests::member::Member;
use tonic::Code;

fn status(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

const NOT_FOUND: (Code, &str) = (Code::NotFound, "etcdserver: requested lease not found");

async fn keys(c: &mut Client, prefix: &str) -> Vec<String> {
    let r = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
}

#[tokio::test]
async fn grant_attach_keepalive_revoke_and_errors() {
    let member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;

    // Server-chosen ID; a TTL below the minimum (2 s with etcd's default
    // timing) is raised to it.
    let g = c.lease_grant(1, None).await.unwrap();
    assert!(g.id() > 0);
    assert_eq!(g.ttl(), 2);
    let id = c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x77))).await.unwrap().id();
    assert_eq!(id, 0x77);
    let dup = c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x77))).await.unwrap_err();
    assert_eq!(status(dup), (Code::FailedPrecondition, "etcdserver: lease already exists".into()));
    let big = c.lease_grant(9_000_000_001, None).await.unwrap_err();
    assert_eq!(status(big), (Code::OutOfRange, "etcdserver: too large lease TTL".into()));

    // Keys attach by put; unknown leases are refused, in a txn too.
    c.put("l/a", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    c.put("l/b", "2", Some(PutOptions::new().with_lease(id))).await.unwrap();
    c.put("l/c", "3", Some(PutOptions::new().with_lease(id))).await.unwrap();
    c.put("l/c", "3", None).await.unwrap(); // moved off the lease
    let e = c.put("x", "1", Some(PutOptions::new().with_lease(0x99))).await.unwrap_err();
    assert_eq!(status(e), (NOT_FOUND.0, NOT_FOUND.1.into()));
    let txn = Txn::new().and_then([TxnOp::put("x", "1", Some(PutOptions::new().with_lease(0x99)))]);
    assert_eq!(status(c.txn(txn).await.unwrap_err()), (NOT_FOUND.0, NOT_FOUND.1.into()));
    assert!(keys(&mut c, "x").await.is_empty(), "a refused put wrote nothing");

    let ttl = c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!((ttl.id(), ttl.granted_ttl()), (id, 60));
    assert!((58..=60).contains(&ttl.ttl()), "{}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"l/a".to_vec(), b"l/b".to_vec()]);
    let unknown = c.lease_time_to_live(0x99, None).await.unwrap();
    assert_eq!(unknown.ttl(), -1);
    let mut listed: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
    listed.sort();
    let mut want = vec![g.id(), id];
    want.sort();
    assert_eq!(listed, want);

    // Keepalive: the whole TTL again; an unknown lease gets TTL 0.
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let r = responses.message().await.unwrap().expect("keepalive response");
    assert_eq!((r.id(), r.ttl()), (id, 60));
    // (etcd-client turns the TTL 0 that etcd answers for it into an error.)
    let unknown = c.lease_keep_alive(0x99).await.unwrap_err();
    assert!(matches!(unknown, etcd_client::Error::LeaseKeepAliveError(_)), "{unknown:?}");

    // Revoke: every attached key deleted in one revision; the rest stays.
    let before = c.get("l/c", None).await.unwrap().header().unwrap().revision();
    let mut w = c.watch("l/", Some(WatchOptions::new().with_prefix().with_start_revision(before + 1))).await.unwrap();
    let revoked = c.lease_revoke(id).await.unwrap();
    assert_eq!(revoked.header().unwrap().revision(), before + 1);
    assert_eq!(keys(&mut c, "l/").await, ["l/c"]);
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let r = w.message().await.unwrap().expect("watch");
        for e in r.events() {
            assert_eq!((e.event_type(), e.kv().unwrap().mod_revision()), (EventType::Delete, before + 1));
            deleted.push(e.kv().unwrap().key().to_vec());
        }
    }
    deleted.sort();
    assert_eq!(deleted, [b"l/a".to_vec(), b"l/b".to_vec()]);
    assert_eq!(status(c.lease_revoke(id).await.unwrap_err()), (NOT_FOUND.0, NOT_FOUND.1.into()));
}

#[tokio::test]
async fn keys_vanish_within_ttl_plus_one_second_after_keepalives_stop() {
    let member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("e/k", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();

    // Kept alive for twice its TTL: still there.
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        keeper.keep_alive().await.unwrap();
        assert_eq!(responses.message().await.unwrap().expect("keepalive").ttl(), 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(keys(&mut c, "e/").await, ["e/k"], "a kept-alive lease expired");

    // Keepalives stop: gone within TTL + 1 s.
    let stopped = Instant::now();
    drop(keeper);
    drop(responses);
    while !keys(&mut c, "e/").await.is_empty() {
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "keys still there {:?} after keepalives stopped",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.lease_time_to_live(id, None).await.unwrap().ttl(), -1, "the lease is revoked");
}

async fn remaining(c: &mut Client, id: i64) -> i64 {
    c.lease_time_to_live(id, None).await.unwrap().ttl()
}

#[tokio::test]
async fn restarts_keep_leases_keys_and_remaining_ttls() {
    let mut member = Member::ferrocd(&["--experimental-lease-checkpoint-interval", "1s"]).await;
    let mut c = member.client().await;
    let id = c.lease_grant(60, None).await.unwrap().id();
    c.put("r/k", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // kill -9: the last periodic checkpoint (at most 1 s old) is what counts,
    // not the whole TTL again.
    member.kill();
    member.restart().await;
    let mut c = member.client().await;
    let left = remaining(&mut c, id).await;
    assert!((50..=58).contains(&left), "after kill -9 the lease has {left} s left of 60");
    let ttl = c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!((ttl.granted_ttl(), ttl.keys()), (60, &[b"r/k".to_vec()][..]));

    // A clean stop checkpoints on the way down.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let before_stop = remaining(&mut c, id).await;
    assert!(member.stop(), "clean stop");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    member.restart().await;
    let mut c = member.client().await;
    let left = remaining(&mut c, id).await;
    assert!(
        left <= before_stop + 1 && left >= before_stop - 3,
        "{left} s left after a clean restart, {before_stop} before"
    );

    // A keepalive restores the whole TTL, and clears the checkpoint: a
    // restart right after keeps (about) the whole TTL.
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(responses.message().await.unwrap().expect("keepalive").ttl(), 60);
    member.kill();
    member.restart().await;
    let mut c = member.client().await;
    let left = remaining(&mut c, id).await;
    assert!(left >= 57, "{left} s left after a keepalive and a restart");
    // Revoke after the restarts still finds the key.
    c.lease_revoke(id).await.unwrap();
    assert!(keys(&mut c, "r/").await.is_empty());
}

/// The same scripted lease requests to etcd 3.5.1 and ferrocd: same
/// answers (TTLs counting down are compared as granted, not remaining).
async fn script(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let mut log = |s: String| out.push(s);
    let err = |e: etcd_client::Error| format!("{:?}", status(e));
    for (id, ttl) in [(1, 1), (2, 10), (3, 0), (2, 10), (4, 9_000_000_001), (5, -5)] {
        match c.lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id))).await {
            Ok(g) => log(format!("grant {id}: id {} ttl {} rev {}", g.id(), g.ttl(), g.header().unwrap().revision())),
            Err(e) => log(format!("grant {id}: {}", err(e))),
        }
    }
    for (key, lease) in [("a", 1), ("b", 2), ("c", 2), ("d", 7), ("b", 1), ("a", 0)] {
        match c.put(key, "v", Some(PutOptions::new().with_lease(lease))).await {
            Ok(r) => log(format!("put {key}@{lease}: rev {}", r.header().unwrap().revision())),
            Err(e) => log(format!("put {key}@{lease}: {}", err(e))),
        }
    }
    for id in [1, 2, 7] {
        let r = c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
        let ttl = if r.ttl() > 0 { "counting" } else { "gone" };
        log(format!("ttl {id}: granted {} {ttl} keys {:?}", r.granted_ttl(), r.keys()));
    }
    for id in [2, 2, 7] {
        match c.lease_revoke(id).await {
            Ok(r) => log(format!("revoke {id}: rev {}", r.header().unwrap().revision())),
            Err(e) => log(format!("revoke {id}: {}", err(e))),
        }
    }
    let all = c.get("", Some(etcd_client::GetOptions::new().with_from_key())).await.unwrap();
    log(format!("keys {:?}", all.kvs().iter().map(|kv| (kv.key().to_vec(), kv.lease())).collect::<Vec<_>>()));
    let mut ids: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
    ids.sort();
    log(format!("leases {ids:?}"));
    out
}

#[tokio::test]
async fn same_lease_answers_as_etcd_3_5() {
    let Some((etcd, ferrocd)) = Member::etcd_and_ferrocd(&[]).await else { return };
    let want = script(&mut etcd.client().await).await;
    let got = script(&mut ferrocd.client().await).await;
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    assert_eq!(got.len(), want.len());
}
