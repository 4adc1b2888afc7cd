//! A member whose data silently diverged (changed behind raft's back) is
//! found by comparing HashKV across members, as etcd's corruption checks
//! do: the leader raises the CORRUPT alarm, after which reads and writes
//! answer etcd's "corrupt cluster"; with the initial check, the member
//! refuses to start.

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client};
use ferrocd_tests::cluster::Cluster;

const AGREE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_diverged_raises_corrupt_and_fails_the_initial_check() {
    let mut cluster = Cluster::ferrocd(3, &["--experimental-corrupt-check-time", "1s"]).await;
    let leader = cluster.leader(AGREE).await;
    let mut c = Client::connect([cluster.members[leader].endpoint()], None).await.expect("connect");
    let mut acked = Vec::new();
    for i in 0..50 {
        c.put(format!("w/{i}"), "v", None).await.expect("put");
        acked.push(format!("w/{i}"));
    }
    cluster.check_converged(&acked).await;
    // Nothing to find while the members agree.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alarms = c.alarm(AlarmAction::Get, AlarmType::None, None).await.expect("alarms");
    assert!(alarms.alarms().is_empty(), "{} alarms among members that agree", alarms.alarms().len());

    // A follower's backend is changed behind raft's back while it is down.
    let victim = (leader + 1) % 3;
    assert!(cluster.members[victim].stop(), "the follower did not stop cleanly");
    {
        let store = ferrocd::mvcc::Store::open(&cluster.members[victim].data_dir().join("member/db"))
            .expect("open the backend");
        let (index, term) = (store.consistent_index(), store.consistent_term());
        let mut b = store.write();
        b.txn().put(b"w/0", b"tampered".to_vec(), 0);
        b.commit(index, term);
        store.flush().expect("flush");
    }
    cluster.members[victim].restart().await;
    for i in 50..60 {
        c.put(format!("w/{i}"), "v", None).await.expect("put");
    }
    let victim_id = Client::connect([cluster.members[victim].endpoint()], None)
        .await
        .expect("connect")
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    let deadline = Instant::now() + AGREE;
    loop {
        let alarms = c.alarm(AlarmAction::Get, AlarmType::None, None).await.expect("alarms");
        let corrupt: Vec<u64> =
            alarms.alarms().iter().filter(|a| a.alarm() == AlarmType::Corrupt).map(|a| a.member_id()).collect();
        if !corrupt.is_empty() {
            assert_eq!(corrupt, vec![victim_id], "CORRUPT raised for the wrong member");
            break;
        }
        assert!(Instant::now() < deadline, "no CORRUPT alarm:\n{}", cluster.members[leader].log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = c.put("after", "v", None).await.expect_err("writes are refused under CORRUPT");
    assert!(err.to_string().contains("etcdserver: corrupt cluster"), "{err}");
    // The member it names serves no reads; the others still do.
    let mut on_victim = Client::connect([cluster.members[victim].endpoint()], None).await.expect("connect");
    for serializable in [false, true] {
        let opts = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
        let err = on_victim.get("w/1", opts).await.expect_err("the corrupt member serves a read");
        assert!(err.to_string().contains("etcdserver: corrupt cluster"), "{err}");
    }
    assert_eq!(c.get("w/1", None).await.expect("a healthy member's read").kvs().len(), 1);
    // Disarmed, the cluster serves again (the operator replaces the member).
    let mut which = AlarmOptions::new();
    which.with_member(victim_id);
    c.alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(which)).await.expect("disarm");
    c.put("after-disarm", "v", None).await.expect("put after disarming");

    // With the initial check, the diverged member refuses to start.
    cluster.members[victim].set_flag("--experimental-initial-corrupt-check", "true");
    let refused = cluster.members[victim].try_restart().await;
    let log = refused.expect_err("a member whose data differs started");
    assert!(log.contains("differs from a peer's at the same revision"), "{log}");
}
