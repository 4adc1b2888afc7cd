//! Leases on a three-member cluster across a leader change: lease calls
//! made on a follower reach the leader (as etcd forwards them), and the new
//! leader resumes every countdown from its last checkpoint: a lease kept
//! alive lives on although by the followers' clocks it outlived its TTL long
//! ago, a lease left alone keeps its remaining TTL (not a whole new one), and
//! one that runs out is revoked with its key.

use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use ferrocd_tests::cluster::Cluster;

const AGREE: Duration = Duration::from_secs(30);

/// One keepalive on a stream of its own: the TTL it was renewed to (0 when
/// the lease is gone).
async fn renew(c: &mut Client, id: i64) -> Result<i64, etcd_client::Error> {
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await?;
    keeper.keep_alive().await?;
    let resp = responses.message().await?;
    Ok(resp.map(|r| r.ttl()).unwrap_or(0))
}

async fn present(c: &mut Client, key: &str) -> bool {
    !c.get(key, None).await.expect("get").kvs().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_their_countdowns_across_a_leader_change() {
    let mut cluster = Cluster::ferrocd(3, &["--experimental-lease-checkpoint-interval", "1s"]).await;
    let leader = cluster.leader(AGREE).await;
    // Every call goes through a follower that survives.
    let follower = (leader + 1) % 3;
    let mut c = cluster.members[follower].client().await;
    let granted = Instant::now();
    let kept = c.lease_grant(3, None).await.expect("grant").id();
    let alone = c.lease_grant(60, None).await.expect("grant").id();
    let short = c.lease_grant(10, None).await.expect("grant").id();
    for (key, id) in [("lease/kept", kept), ("lease/alone", alone), ("lease/short", short)] {
        c.put(key, "v", Some(PutOptions::new().with_lease(id))).await.expect("put with a lease");
    }
    // `kept` renewed for longer than its TTL (the followers' countdowns for
    // it run out: a new leader must not expire it by them; that race is hit
    // only when the takeover is slow, and `lease::tests` check the rule);
    // `short` left to run out, about 5 s after the kill.
    for _ in 0..5 {
        assert_eq!(renew(&mut c, kept).await.expect("keepalive through a follower"), 3);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(renew(&mut c, kept).await.expect("keepalive"), 3);
    cluster.members[leader].kill();
    let killed = Instant::now();

    // A keepalive through the follower waits out the election (as etcd's
    // follower retries its leader until the request timeout).
    let ttl = renew(&mut c, kept).await.expect("a keepalive through a follower during the election");
    assert_eq!(ttl, 3, "the kept lease was lost in the leader change");
    let renewed_after = killed.elapsed();
    eprintln!("keepalives went through again {renewed_after:?} after the leader's kill");
    assert_ne!(cluster.leader(AGREE).await, leader);
    // `short` had about 5 s left at the kill, and its countdown stood still
    // until the takeover.
    assert!(present(&mut c, "lease/short").await, "a lease with time left expired in the leader change");

    // The lease left alone counts on from its checkpoint (at most 1 s old)
    // less the time since the takeover: not a whole new 60 s. Its countdown
    // stood still from the kill to the takeover, which came before the
    // keepalive above went through.
    let ttl = c.lease_time_to_live(alone, None).await.expect("time to live").ttl();
    let lived = granted.elapsed().as_secs() as i64;
    let stood_still = renewed_after.as_secs_f64().ceil() as i64;
    assert!(
        ttl <= 60 - lived + stood_still + 2 && ttl >= 60 - lived - 2,
        "{ttl} s left of 60 after {lived} s, {stood_still} s of them without a leader"
    );

    // Renewals go on for longer than the TTL under the new leader.
    for _ in 0..4 {
        assert_eq!(renew(&mut c, kept).await.expect("keepalive under the new leader"), 3);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(present(&mut c, "lease/kept").await, "the kept lease's key is gone");
    assert!(present(&mut c, "lease/alone").await, "the key of a lease with 50 s left is gone");
    let left = c.lease_time_to_live(kept, None).await.expect("time to live").ttl();
    assert!((1..=3).contains(&left), "the kept lease has {left} s left");

    // `short` ran out under the new leader, which revoked it with its key.
    let deadline = Instant::now() + Duration::from_secs(15);
    while present(&mut c, "lease/short").await {
        assert!(Instant::now() < deadline, "a lease that ran out was not revoked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.lease_time_to_live(short, None).await.expect("time to live").ttl(), -1);
}
