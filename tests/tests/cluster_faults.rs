//! A three-member cluster under continuous writes from several clients
//! while members die, stop and restart: afterwards every acknowledged write
//! is on every member, the members' HashKV agree, no client saw a revision
//! go backwards, and the history of reads and writes on shared keys is
//! linearizable.

use std::time::Duration;

use ferrocd_tests::cluster::Cluster;
use ferrocd_tests::workload::{ClientLog, Workload};

const CLIENTS: usize = 4;
const AGREE: Duration = Duration::from_secs(30);

/// Stops the workload and checks everything it saw.
async fn finish(cluster: &mut Cluster, workload: Workload) {
    let (logs, history) = workload.stop().await;
    let acked: Vec<String> = logs.iter().flat_map(|l: &ClientLog| l.acked.iter().cloned()).collect();
    assert!(acked.len() > 50, "the clients got only {} writes through", acked.len());
    for (c, l) in logs.iter().enumerate() {
        assert!(l.went_back.is_empty(), "client {c} saw revisions go backwards: {:?}", l.went_back);
    }
    cluster.check_converged(&acked).await;
    assert!(history.len() > 20, "too few operations on shared keys: {}", history.len());
    history.check().expect("the history is linearizable");
    eprintln!(
        "{} acknowledged writes, {} shared-key operations, all present and linearizable",
        acked.len(),
        history.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_and_restarted_loses_nothing() {
    let mut cluster = Cluster::ferrocd(3, &[]).await;
    let leader = cluster.leader(AGREE).await;
    let workload = Workload::start(cluster.endpoints(), CLIENTS);
    workload.wait_for_writes(100, AGREE).await.expect("writes before the kill");
    let follower = (leader + 1) % 3;
    cluster.members[follower].kill();
    workload.wait_for_writes(200, AGREE).await.expect("writes go on with a follower down");
    cluster.members[follower].restart().await;
    workload.wait_for_writes(100, AGREE).await.expect("writes after the restart");
    finish(&mut cluster, workload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let mut cluster = Cluster::ferrocd(3, &[]).await;
    let leader = cluster.leader(AGREE).await;
    let workload = Workload::start(cluster.endpoints(), CLIENTS);
    workload.wait_for_writes(100, AGREE).await.expect("writes before the kill");
    cluster.members[leader].kill();
    let took = workload.wait_for_writes(1, AGREE).await.expect("writes go on after the leader died");
    eprintln!("first write acknowledged {took:?} after the leader's kill -9");
    let new_leader = cluster.leader(AGREE).await;
    assert_ne!(new_leader, leader);
    workload.wait_for_writes(100, AGREE).await.expect("writes under the new leader");
    cluster.members[leader].restart().await;
    workload.wait_for_writes(100, AGREE).await.expect("writes after the old leader is back");
    finish(&mut cluster, workload).await;
}

/// A follower whose link to its leader broke fails a write at once with
/// etcd's "no leader" (clients retry it elsewhere) instead of forwarding it
/// into the dead link, where raft drops it silently and the client would
/// wait out its request timeout. A 5 s election timeout keeps the cluster
/// leaderless for the whole check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_leader_died_fails_writes_at_once_with_no_leader() {
    let mut cluster = Cluster::ferrocd(3, &["--heartbeat-interval", "100", "--election-timeout", "5000"]).await;
    let leader = cluster.leader(AGREE).await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.members[follower].client().await;
    client.put("before", "1", None).await.expect("a put through the follower");
    let leader_id = client.status().await.expect("status").leader();
    cluster.members[leader].kill();
    // The follower sees its link to the leader go down (the killed
    // process's connections close at once).
    let addr = cluster.members[follower].endpoint().trim_start_matches("http://").to_string();
    let link = format!("Remote=\"{leader_id:x}\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    loop {
        let (_, body) = ferrocd_tests::http::try_http_get(&addr, "/metrics").await.expect("metrics");
        let down =
            body.lines().any(|l| l.starts_with("etcd_network_active_peers{") && l.contains(&link) && l.ends_with(" 0"));
        if down {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the follower still counts the dead leader as active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Far below the request timeout, and no election can end in it.
    let put = tokio::time::timeout(Duration::from_secs(3), client.put("after", "1", None)).await;
    match put {
        Ok(Err(etcd_client::Error::GRpcStatus(status))) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert_eq!(status.message(), "etcdserver: no leader");
        }
        other => panic!("a write through a follower without a leader: {other:?}"),
    }
    let got = client.get("after", Some(etcd_client::GetOptions::new().with_serializable())).await.expect("get");
    assert!(got.kvs().is_empty(), "the refused write was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_before_an_election_timeout() {
    // With a 5 s election timeout, only a hand-over lets writes resume
    // sooner than 5 s after the leader is told to stop.
    let mut cluster = Cluster::ferrocd(3, &["--heartbeat-interval", "100", "--election-timeout", "5000"]).await;
    let leader = cluster.leader(AGREE).await;
    let workload = Workload::start(cluster.endpoints(), CLIENTS);
    workload.wait_for_writes(100, AGREE).await.expect("writes before the stop");
    // SIGTERM, then watch the acknowledgements for 6 s: the longest time
    // without one is how long the cluster did not take writes.
    let pid = cluster.members[leader].pid().expect("the leader runs");
    let sigterm = std::time::Instant::now();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
    assert!(sent.success());
    let (mut last, mut last_at, mut longest) = (workload.acked(), std::time::Instant::now(), Duration::ZERO);
    while sigterm.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = workload.acked();
        if now > last {
            longest = longest.max(last_at.elapsed());
            (last, last_at) = (now, std::time::Instant::now());
        }
    }
    longest = longest.max(last_at.elapsed());
    eprintln!("after SIGTERM to the leader, the longest time without an acknowledged write: {longest:?}");
    let member = &mut cluster.members[leader];
    assert!(tokio::task::block_in_place(|| member.stop()), "the leader did not stop cleanly:\n{}", member.log_tail());
    assert!(
        cluster.members[leader].log_tail().contains("handed leadership over"),
        "the leader did not hand over:\n{}",
        cluster.members[leader].log_tail()
    );
    assert!(longest < Duration::from_secs(5), "no write was acknowledged for {longest:?} after SIGTERM");
    let new_leader = cluster.leader(AGREE).await;
    assert_ne!(new_leader, leader);
    cluster.members[leader].restart().await;
    workload.wait_for_writes(50, AGREE).await.expect("writes after the old leader is back");
    finish(&mut cluster, workload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_stopped_and_started_keeps_everything() {
    let mut cluster = Cluster::ferrocd(3, &[]).await;
    let workload = Workload::start(cluster.endpoints(), CLIENTS);
    workload.wait_for_writes(200, AGREE).await.expect("writes before the stop");
    let (logs, history) = workload.stop().await;
    for m in &mut cluster.members {
        m.kill();
    }
    for m in &mut cluster.members {
        m.launch_process();
    }
    for m in &mut cluster.members {
        m.wait_ready().await.expect("restarted");
    }
    let acked: Vec<String> = logs.iter().flat_map(|l| l.acked.iter().cloned()).collect();
    cluster.check_converged(&acked).await;
    history.check().expect("the history is linearizable");
}

/// The documented way out of a lost quorum: the survivor restarts with
/// `--force-new-cluster` as a one-member cluster that keeps every write it
/// had, serves at once, and stays that way without the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_brings_back_a_survivor_of_a_lost_quorum() {
    let mut cluster = Cluster::ferrocd(3, &[]).await;
    let workload = Workload::start(cluster.endpoints(), CLIENTS);
    workload.wait_for_writes(200, AGREE).await.expect("writes before the loss");
    let (logs, _) = workload.stop().await;
    let acked: Vec<String> = logs.iter().flat_map(|l| l.acked.iter().cloned()).collect();
    // Every member has every write (a quorum acknowledged them; the third
    // gets them a moment later), so the survivor may be any of them.
    cluster.check_converged(&acked).await;
    for m in &mut cluster.members {
        m.kill();
    }
    let survivor = &mut cluster.members[2];
    survivor.set_flag("--force-new-cluster", "true");
    survivor.restart().await;
    let mut c = etcd_client::Client::connect([survivor.endpoint()], None).await.expect("connect");
    let list = c.member_list().await.expect("member list");
    assert_eq!(list.members().len(), 1, "{:?}", list.members());
    assert_eq!(list.members()[0].name(), cluster.seats[2].name);
    c.put("after-force", "v", None).await.expect("the survivor takes writes alone");
    let got = c.get("w/", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await.expect("get");
    let keys: std::collections::HashSet<Vec<u8>> = got.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    let missing = acked.iter().filter(|k| !keys.contains(k.as_bytes())).count();
    assert_eq!(missing, 0, "the survivor lost {missing} of {} acknowledged writes", acked.len());
    // Restarted without the flag, it is still the one member.
    let survivor = &mut cluster.members[2];
    survivor.set_flag("--force-new-cluster", "false");
    survivor.restart().await;
    let mut c = etcd_client::Client::connect([survivor.endpoint()], None).await.expect("connect");
    assert_eq!(c.member_list().await.expect("member list").members().len(), 1);
    assert_eq!(c.get("after-force", None).await.expect("get").kvs().len(), 1);
}

/// A leader cut off from its peers (clients still reach it): it
/// acknowledges nothing and serves no linearizable read while the majority
/// elects another leader and goes on; once healed it rejoins and nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_acknowledges_nothing_and_serves_no_stale_read() {
    let Some(mut cluster) = Cluster::ferrocd_partitionable(3, &[]).await else { return };
    let leader = cluster.leader(AGREE).await;
    let mut old = etcd_client::Client::connect([cluster.members[leader].endpoint()], None).await.expect("connect");
    old.put("seen-before", "1", None).await.expect("put before the cut");
    let workload = Workload::start(cluster.endpoints(), CLIENTS);
    workload.wait_for_writes(100, AGREE).await.expect("writes before the cut");
    cluster.net.as_ref().expect("net").cut(leader);
    // The majority elects a leader and takes writes (clients whose request
    // went to the cut-off member wait for it to fail first).
    workload.wait_for_writes(30, Duration::from_secs(60)).await.expect("the majority goes on");
    let mut majority =
        etcd_client::Client::connect([cluster.members[(leader + 1) % 3].endpoint()], None).await.expect("connect");
    majority.put("seen-before", "2", None).await.expect("a write through the majority");
    // The cut-off member neither acknowledges a write nor answers a
    // linearizable read with the value the majority replaced.
    let put = tokio::time::timeout(Duration::from_secs(10), old.put("on-the-minority", "x", None)).await;
    assert!(!matches!(put, Ok(Ok(_))), "the minority acknowledged a write: {put:?}");
    let read = tokio::time::timeout(Duration::from_secs(10), old.get("seen-before", None)).await;
    if let Ok(Ok(resp)) = &read {
        panic!("the minority served a linearizable read: {:?}", resp.kvs().first().map(|kv| kv.value().to_vec()));
    }
    cluster.net.as_ref().expect("net").heal(leader);
    workload.wait_for_writes(50, Duration::from_secs(60)).await.expect("writes after the heal");
    finish(&mut cluster, workload).await;
    let got = old.get("on-the-minority", None).await.expect("read after the heal");
    assert!(got.kvs().is_empty(), "a write no quorum acknowledged was applied");
}

/// A watch on a follower delivers every write exactly once and in order,
/// while the leader is killed and another takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_sees_every_write_once_across_a_leader_change() {
    let mut cluster = Cluster::ferrocd(3, &[]).await;
    let leader = cluster.leader(AGREE).await;
    let follower = (leader + 1) % 3;
    let mut wc = etcd_client::Client::connect([cluster.members[follower].endpoint()], None).await.expect("connect");
    let mut stream =
        wc.watch("w/", Some(etcd_client::WatchOptions::new().with_prefix())).await.expect("watch on a follower");
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(i64, Vec<u8>)>::new()));
    let into = events.clone();
    let seen = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let mut into = into.lock().expect("events lock");
            for e in resp.events() {
                if let Some(kv) = e.kv() {
                    into.push((kv.mod_revision(), kv.key().to_vec()));
                }
            }
        }
    });
    let endpoints: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.members[i].endpoint())
        .chain([cluster.members[leader].endpoint()])
        .collect();
    let workload = Workload::start(endpoints, CLIENTS);
    workload.wait_for_writes(100, AGREE).await.expect("writes before the kill");
    cluster.members[leader].kill();
    workload.wait_for_writes(100, AGREE).await.expect("writes after the kill");
    let (logs, _) = workload.stop().await;
    let acked: Vec<String> = logs.iter().flat_map(|l| l.acked.iter().cloned()).collect();
    cluster.check_converged(&acked).await;
    // Everything is applied on the follower: give the watch a moment to
    // deliver it, then end it and look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.abort();
    let events = events.lock().expect("events lock").clone();
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "revisions out of order or repeated");
    let keys: std::collections::HashSet<&[u8]> = events.iter().map(|(_, k)| k.as_slice()).collect();
    assert_eq!(keys.len(), events.len(), "a key was delivered twice");
    let missing: Vec<&String> = acked.iter().filter(|k| !keys.contains(k.as_bytes())).collect();
    assert!(
        missing.is_empty(),
        "the watch missed {} acknowledged writes, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
}
