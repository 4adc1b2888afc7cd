//! The Lock and Election services (etcd's v3lock and v3election) through the
//! `etcd-client` crate, and their mutual exclusion with `etcdctl lock`, which
//! takes the same lock client-side.

use std::time::Duration;

use etcd_client::{Client, LockOptions, ProclaimOptions, ResignOptions};
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;
use tonic::Code;

fn status(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Still waiting after a while: it must not get what another one holds.
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!task.is_finished(), "got the lock/leadership while another held it");
}

#[tokio::test]
async fn locks_exclude_each_other_in_order() {
    let member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;
    let lease_a = c.lease_grant(60, None).await.unwrap().id();
    let lease_b = c.lease_grant(60, None).await.unwrap().id();

    let a = c.lock("job", Some(LockOptions::new().with_lease(lease_a))).await.unwrap();
    assert_eq!(a.key(), format!("job/{lease_a:x}").as_bytes());
    let b = {
        let mut c = c.clone();
        tokio::spawn(async move { c.lock("job", Some(LockOptions::new().with_lease(lease_b))).await })
    };
    still_waiting(&b).await;

    // etcdctl's lock (client-side, same keys) waits too.
    if let Some(etcdctl) = require_tool("etcdctl-3.5") {
        let ep = member.endpoint().trim_start_matches("http://").to_string();
        let out = std::process::Command::new("timeout")
            .args(["2", etcdctl.to_str().unwrap(), &format!("--endpoints={ep}"), "lock", "job", "echo", "entered"])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains("entered"), "etcdctl took a held lock");
        // Still waiting when `timeout` stopped it, not failed for another reason.
        assert_eq!(out.status.code(), Some(124), "{}", String::from_utf8_lossy(&out.stderr));
    }

    let unlocked = c.unlock(a.key()).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), b).await.expect("b waits forever").unwrap().unwrap();
    assert_eq!(b.key(), format!("job/{lease_b:x}").as_bytes());
    assert!(b.header().unwrap().revision() >= unlocked.header().unwrap().revision());

    // The holder's lease ending releases the lock too.
    let lease_c = c.lease_grant(60, None).await.unwrap().id();
    let waiter = {
        let mut c = c.clone();
        tokio::spawn(async move { c.lock("job", Some(LockOptions::new().with_lease(lease_c))).await })
    };
    still_waiting(&waiter).await;
    c.lease_revoke(lease_b).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("waits forever").unwrap().unwrap();
    assert_eq!(got.key(), format!("job/{lease_c:x}").as_bytes());

    // No lease: the server makes one (clientv3's 60 s session lease).
    let free = c.lock("other", None).await.unwrap();
    let kv = c.get(free.key(), None).await.unwrap().kvs()[0].clone();
    assert_ne!(kv.lease(), 0);
    assert_eq!(c.lease_time_to_live(kv.lease(), None).await.unwrap().granted_ttl(), 60);
}

#[tokio::test]
async fn elections_campaign_proclaim_observe_resign() {
    let member = Member::ferrocd(&[]).await;
    let mut c: Client = member.client().await;
    let e = c.leader("nobody").await.unwrap_err();
    assert_eq!(status(e), (Code::Unknown, "election: no leader".into()));

    let lease_a = c.lease_grant(60, None).await.unwrap().id();
    let lease_b = c.lease_grant(60, None).await.unwrap().id();
    let mut won = c.campaign("boss", "alice", lease_a).await.unwrap();
    let alice = won.take_leader().expect("leader key");
    assert_eq!(
        (alice.name(), alice.key(), alice.lease()),
        (&b"boss"[..], format!("boss/{lease_a:x}").as_bytes(), lease_a)
    );
    let leader = c.leader("boss").await.unwrap();
    assert_eq!(leader.kv().unwrap().value(), b"alice");

    let mut observe = c.observe("boss").await.unwrap();
    let first = observe.message().await.unwrap().expect("observe");
    assert_eq!(first.kv().unwrap().value(), b"alice");

    c.proclaim("alice-2", Some(ProclaimOptions::new().with_leader(alice.clone()))).await.unwrap();
    assert_eq!(observe.message().await.unwrap().expect("observe").kv().unwrap().value(), b"alice-2");
    assert_eq!(c.leader("boss").await.unwrap().kv().unwrap().value(), b"alice-2");

    let bob = {
        let mut c = c.clone();
        tokio::spawn(async move { c.campaign("boss", "bob", lease_b).await })
    };
    still_waiting(&bob).await;
    c.resign(Some(ResignOptions::new().with_leader(alice.clone()))).await.unwrap();
    let mut bob =
        tokio::time::timeout(Duration::from_secs(10), bob).await.expect("bob waits forever").unwrap().unwrap();
    let bob = bob.take_leader().expect("leader key");
    assert_eq!(bob.key(), format!("boss/{lease_b:x}").as_bytes());
    // Observers see the new leader.
    assert_eq!(observe.message().await.unwrap().expect("observe").kv().unwrap().value(), b"bob");

    // The old leader can no longer proclaim.
    let e = c.proclaim("late", Some(ProclaimOptions::new().with_leader(alice))).await.unwrap_err();
    assert_eq!(status(e), (Code::Unknown, "election: not leader".into()));
    assert_eq!(c.leader("boss").await.unwrap().kv().unwrap().value(), b"bob");
}

/// etcd's Lock and Election services run clientv3 against their own
/// server, and clientv3 turns etcd's gRPC errors into plain ones: the client
/// gets code Unknown with etcd's text. Over quota, a lock or a campaign is a
/// write like any other (etcd's quota-checked KV and Lease servers are under
/// that clientv3): the first one raises NOSPACE, and nothing is left behind.
#[tokio::test]
async fn lock_and_election_errors_as_etcd() {
    let nospace = Err((Code::Unknown, "etcdserver: mvcc: database space exceeded".to_string()));
    let no_lease = Err((Code::Unknown, "etcdserver: requested lease not found".to_string()));

    let Some((etcd, ferrocd)) = Member::etcd_and_ferrocd(&[]).await else { return };
    let mut outcomes = Vec::new();
    for member in [&etcd, &ferrocd] {
        let mut c = member.client().await;
        let lock = c.lock("job", Some(LockOptions::new().with_lease(0x5151))).await.map(|_| ()).map_err(status);
        let campaign = c.campaign("leader", "me", 0x5151).await.map(|_| ()).map_err(status);
        outcomes.push((lock, campaign));
    }
    assert_eq!(outcomes[1], outcomes[0], "ferrocd (left) differs from etcd (right)");
    assert_eq!(outcomes[1], (no_lease.clone(), no_lease));

    // A quota far below any real backend.
    let Some((etcd, ferrocd)) = Member::etcd_and_ferrocd(&["--quota-backend-bytes", "1"]).await else { return };
    let mut outcomes = Vec::new();
    for member in [&etcd, &ferrocd] {
        let mut c = member.client().await;
        let lock = c.lock("job", None).await.map(|_| ()).map_err(status);
        let alarms = c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.unwrap();
        let alarms: Vec<_> = alarms.alarms().iter().map(|a| a.alarm()).collect();
        let campaign = c.campaign("leader", "me", 0).await.map(|_| ()).map_err(status);
        let left = c.get("", Some(etcd_client::GetOptions::new().with_all_keys())).await.unwrap().count();
        let leases = c.leases().await.unwrap().leases().len();
        outcomes.push((lock, alarms, campaign, left, leases));
    }
    assert_eq!(outcomes[1], outcomes[0], "ferrocd (left) differs from etcd (right)");
    assert_eq!(outcomes[1], (nospace.clone(), vec![etcd_client::AlarmType::Nospace], nospace, 0, 0));
}
