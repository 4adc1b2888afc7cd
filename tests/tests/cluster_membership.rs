//! Membership through the Cluster service, driven by etcdctl as a user
//! would: a learner joins, catches up, is promoted and removed; and every
//! refusal carries etcd 3.5's error, compared with a real etcd cluster.

use std::time::{Duration, Instant};

use ferrocd_tests::cluster::Cluster;
use ferrocd_tests::etcdctl;
use ferrocd_tests::member::Seat;
use ferrocd_tests::tools;

const AGREE: Duration = Duration::from_secs(30);

fn etcdctl_3_5() -> std::path::PathBuf {
    tools::require_tool("etcdctl-3.5")
        .unwrap_or_else(|| panic!("etcdctl 3.5 is required (scripts/install-test-deps.sh)"))
}

/// The error line etcdctl printed.
fn error_line(out: &etcdctl::Output) -> String {
    out.stderr.lines().rfind(|l| l.starts_with("Error:")).unwrap_or(out.stderr.trim()).to_string()
}

/// Runs a membership change until the cluster takes it: members refuse
/// changes until their peers have been connected for 5 s, as etcd's do.
async fn retry_while_unhealthy(mut run: impl FnMut() -> etcdctl::Output) -> etcdctl::Output {
    let deadline = Instant::now() + AGREE;
    loop {
        let out = run();
        if out.success || !error_line(&out).contains("unhealthy cluster") || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_catches_up_is_promoted_and_removed() {
    let etcdctl = etcdctl_3_5();
    let mut cluster = Cluster::ferrocd(3, &[]).await;
    let ep = cluster.endpoints()[0].clone();
    let mut c = cluster.client().await;
    for i in 0..300 {
        c.put(format!("before/{i}"), "v", None).await.expect("put");
    }
    let seat = Seat::new("m3");
    let peer_urls = format!("--peer-urls={}", seat.peer_url());
    let added = retry_while_unhealthy(|| {
        etcdctl::run(&etcdctl, &ep, &["member", "add", "m3", &peer_urls, "--learner", "-w", "json"], None)
    })
    .await;
    let added = added.json();
    let id = added["member"]["ID"].as_u64().expect("new member ID");
    assert_eq!(added["member"]["isLearner"].as_bool(), Some(true));
    let new = cluster.join(seat).await;
    // It serves serializable reads of what was written before it joined...
    let mut nc = etcd_client::Client::connect([cluster.members[new].endpoint()], None).await.expect("connect");
    let deadline = Instant::now() + AGREE;
    loop {
        let got = nc
            .get("before/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only().with_serializable()))
            .await
            .expect("serializable get on the learner");
        if got.count() == 300 {
            break;
        }
        assert!(Instant::now() < deadline, "the learner never caught up: {} keys", got.count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...but refuses what etcd's learners refuse.
    let err = nc.put("on-learner", "v", None).await.expect_err("a learner takes no writes");
    assert!(err.to_string().contains("rpc not supported for learner"), "{err}");
    // Promoted once in sync (raft's "not in sync" answers are retried).
    let deadline = Instant::now() + AGREE;
    loop {
        let out = etcdctl::run(&etcdctl, &ep, &["member", "promote", &format!("{id:x}")], None);
        if out.success {
            assert!(out.stdout.contains("promoted"), "{}", out.stdout);
            break;
        }
        assert!(error_line(&out).contains("in sync with leader"), "{}", out.stderr);
        assert!(Instant::now() < deadline, "never promoted: {}", out.stderr);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = etcdctl::listed_members(&etcdctl::run(&etcdctl, &ep, &["member", "list", "-w", "json"], None).json());
    assert_eq!(list.len(), 4);
    assert!(list.iter().all(|m| !m.is_learner && !m.name.is_empty()), "{list:?}");
    nc.put("on-new-voter", "v", None).await.expect("a voter takes writes");
    // Removed, it stops on its own; the rest serve on.
    let out = retry_while_unhealthy(|| etcdctl::run(&etcdctl, &ep, &["member", "remove", &format!("{id:x}")], None))
        .await
        .ok();
    assert!(out.contains("removed from cluster"), "{out}");
    let deadline = Instant::now() + AGREE;
    while cluster.members[new].is_running() {
        assert!(Instant::now() < deadline, "a removed member kept running:\n{}", cluster.members[new].log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = etcdctl::listed_members(&etcdctl::run(&etcdctl, &ep, &["member", "list", "-w", "json"], None).json());
    assert_eq!(list.len(), 3);
    c.put("after-remove", "v", None).await.expect("the cluster serves on");
}

/// The same refusals from etcd 3.5.1 and ferrocd, as etcdctl prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_refusals_are_etcds() {
    let etcdctl = etcdctl_3_5();
    let Some(mut etcd) = Cluster::etcd(3, &[]).await else { return };
    let mut ferrocd = Cluster::ferrocd(3, &[]).await;
    // With strict reconfiguration checks, etcd refuses every change until
    // its peers have been connected for 5 s ("unhealthy cluster").
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut outputs = Vec::new();
    for cluster in [&mut etcd, &mut ferrocd] {
        let leader = cluster.leader(AGREE).await;
        let follower = (leader + 1) % 3;
        let ep = cluster.endpoints()[leader].clone();
        let follower_ep = cluster.endpoints()[follower].clone();
        let json = etcdctl::run(&etcdctl, &ep, &["member", "list", "-w", "json"], None).json();
        let taken = cluster.seats[1].peer_url();
        // A voter other than the one at `taken`, for the duplicate-URL update.
        let voter = etcdctl::listed_members(&json).into_iter().find(|m| m.peer_urls != [taken.clone()]).expect("voter");
        let voter = format!("{:x}", voter.id);
        let run = |args: &[&str], on: &str| error_line(&etcdctl::run(&etcdctl, on, args, None));
        let mut out = vec![
            run(&["member", "add", "x", "--peer-urls=notaurl"], &ep),
            run(&["member", "add", "x", &format!("--peer-urls={taken}")], &ep),
            run(&["member", "remove", "1234abcd"], &ep),
            run(&["member", "promote", &voter], &ep),
            run(&["member", "promote", "1234abcd"], &follower_ep),
            run(&["member", "update", &voter, "--peer-urls=notaurl"], &ep),
            run(&["member", "update", "1234abcd", "--peer-urls=http://127.0.0.1:1"], &ep),
            run(&["member", "update", &voter, &format!("--peer-urls={taken}")], &ep),
        ];
        let learner_seat = Seat::new("l1");
        let added = etcdctl::run(
            &etcdctl,
            &ep,
            &["member", "add", "l1", &format!("--peer-urls={}", learner_seat.peer_url()), "--learner", "-w", "json"],
            None,
        )
        .json();
        let learner = format!("{:x}", added["member"]["ID"].as_u64().expect("learner ID"));
        out.push(run(
            &["member", "add", "l2", &format!("--peer-urls={}", Seat::new("l2").peer_url()), "--learner"],
            &ep,
        ));
        // Never started: not in sync with the leader.
        out.push(run(&["member", "promote", &learner], &ep));
        out.push(run(&["move-leader", &learner], &ep));
        etcdctl::run(&etcdctl, &ep, &["member", "remove", &learner], None).ok();
        outputs.push(out);
    }
    assert_eq!(outputs[1], outputs[0], "ferrocd (left) vs etcd (right)");
}

/// A learner that joins after the leader compacted its log past what the
/// learner needs is caught up by a snapshot (the backend's image), then
/// promoted; a follower down for as long catches up the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_far_behind_catch_up_by_snapshot() {
    let etcdctl = etcdctl_3_5();
    let flags = ["--snapshot-count", "200", "--snapshot-catchup-entries", "50"];
    let mut cluster = Cluster::ferrocd(3, &flags).await;
    let leader = cluster.leader(AGREE).await;
    let ep = cluster.endpoints()[leader].clone();
    let mut c = etcd_client::Client::connect([ep.clone()], None).await.expect("connect to the leader");
    let follower = (leader + 1) % 3;
    cluster.members[follower].kill();
    let mut acked = Vec::new();
    for i in 0..1000 {
        let key = format!("w/{i}");
        c.put(key.clone(), vec![b'x'; 512], None).await.expect("put");
        acked.push(key);
    }
    cluster.members[follower].restart().await;
    let seat = Seat::new("m3");
    let peer_urls = format!("--peer-urls={}", seat.peer_url());
    let added = retry_while_unhealthy(|| {
        etcdctl::run(&etcdctl, &ep, &["member", "add", "m3", &peer_urls, "--learner", "-w", "json"], None)
    })
    .await
    .json();
    let id = added["member"]["ID"].as_u64().expect("new member ID");
    let new = cluster.join(seat).await;
    let deadline = Instant::now() + AGREE;
    loop {
        let out = etcdctl::run(&etcdctl, &ep, &["member", "promote", &format!("{id:x}")], None);
        if out.success {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never promoted: {}\nlearner:\n{}\nleader:\n{}",
            out.stderr,
            cluster.members[new].log_tail(),
            cluster.members[leader].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 1000..1100 {
        let key = format!("w/{i}");
        c.put(key.clone(), "after", None).await.expect("put");
        acked.push(key);
    }
    for m in [follower, new] {
        let log = std::fs::read_to_string(cluster.members[m].log_path()).unwrap_or_default();
        assert!(
            log.contains("installed the leader's snapshot"),
            "member {m} caught up without a snapshot:\n{}",
            cluster.members[m].log_tail()
        );
    }
    cluster.check_converged(&acked).await;
    // etcd's snapshot metrics: sends counted and timed where they left,
    // receives where they arrived.
    let endpoints = cluster.endpoints();
    let mut scraped = Vec::new();
    for ep in &endpoints {
        let (_, body) =
            ferrocd_tests::http::try_http_get(ep.trim_start_matches("http://"), "/metrics").await.expect("metrics");
        scraped.push(body);
    }
    let total = |body: &str, metric: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let sent: f64 = scraped.iter().map(|b| total(b, "etcd_network_snapshot_send_success")).sum();
    let timed: f64 = scraped.iter().map(|b| total(b, "etcd_network_snapshot_send_total_duration_seconds_count")).sum();
    assert!(sent >= 2.0 && timed == sent, "snapshot sends: {sent} counted, {timed} timed");
    for m in [follower, new] {
        let body = &scraped[m];
        assert!(total(body, "etcd_network_snapshot_receive_success") >= 1.0, "member {m}: no receive counted");
        assert!(
            total(body, "etcd_network_snapshot_receive_total_duration_seconds_count") >= 1.0,
            "member {m}: no receive timed"
        );
    }
    // What they installed survives a crash.
    for m in [follower, new] {
        cluster.members[m].kill();
        cluster.members[m].restart().await;
    }
    cluster.check_converged(&acked).await;
    // The joined member's data lost: started again with its joining flags,
    // it refuses to take its old identity with an empty history.
    cluster.members[new].kill();
    cluster.members[new].wipe();
    let refused = cluster.members[new].try_restart().await.expect_err("an emptied member must not rejoin");
    assert!(refused.contains(&format!("member {id:x} has already been bootstrapped")), "{refused}");
}

/// A member removed while it was down learns it from its peers when it
/// comes back (they refuse it), and stops instead of campaigning forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_down_stops_when_it_comes_back() {
    let etcdctl = etcdctl_3_5();
    let mut cluster = Cluster::ferrocd(3, &[]).await;
    let leader = cluster.leader(AGREE).await;
    let ep = cluster.endpoints()[leader].clone();
    let victim = (leader + 1) % 3;
    let json = etcdctl::run(&etcdctl, &ep, &["member", "list", "-w", "json"], None).json();
    let id = etcdctl::listed_members(&json)
        .into_iter()
        .find(|m| m.name == cluster.seats[victim].name)
        .expect("the victim is listed")
        .id;
    cluster.members[victim].kill();
    retry_while_unhealthy(|| etcdctl::run(&etcdctl, &ep, &["member", "remove", &format!("{id:x}")], None)).await.ok();
    cluster.members[victim].launch_process();
    let deadline = Instant::now() + AGREE;
    while cluster.members[victim].is_running() {
        assert!(Instant::now() < deadline, "a removed member kept running:\n{}", cluster.members[victim].log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.members[victim].log_tail().contains("removed from the cluster"),
        "{}",
        cluster.members[victim].log_tail()
    );
    let mut c = etcd_client::Client::connect([ep], None).await.expect("connect");
    c.put("after", "v", None).await.expect("the two left serve");
}
