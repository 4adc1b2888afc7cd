//! Three ferrocd processes started with etcd's flags form one cluster that
//! stock clients use as they use an etcd cluster: every member serves reads
//! and writes, the members agree on one leader, and member IDs are etcd's.

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use ferrocd_tests::cluster::Cluster;
use ferrocd_tests::etcdctl;
use ferrocd_tests::tools;

const AGREE: Duration = Duration::from_secs(20);

async fn client_of(endpoint: &str) -> Client {
    Client::connect([endpoint], None).await.expect("connect")
}

#[tokio::test]
async fn three_members_form_one_cluster_that_serves_on_every_member() {
    let mut cluster = Cluster::ferrocd(3, &[]).await;
    let leader = cluster.leader(AGREE).await;
    let endpoints = cluster.endpoints();
    // A write on each member, read back linearizably on every member.
    for (i, ep) in endpoints.iter().enumerate() {
        let mut c = client_of(ep).await;
        c.put(format!("k{i}"), format!("from-{i}"), None).await.expect("put");
        for other in &endpoints {
            let mut r = client_of(other).await;
            let got = r.get(format!("k{i}"), None).await.expect("get");
            assert_eq!(got.kvs().len(), 1, "k{i} written on member {i} is missing on {other}");
            assert_eq!(got.kvs()[0].value(), format!("from-{i}").as_bytes());
        }
    }
    // Every member reports the same leader, term and cluster, and its own ID.
    let mut ids = Vec::new();
    for ep in &endpoints {
        let mut c = client_of(ep).await;
        let s = c.status().await.expect("status");
        let h = s.header().expect("header");
        ids.push((h.member_id(), h.cluster_id(), s.leader(), s.raft_term()));
    }
    let leader_id = ids[leader].0;
    for (member, cluster_id, l, term) in &ids {
        assert_eq!(*l, leader_id, "member {member:x} sees another leader: {ids:x?}");
        assert_eq!(*cluster_id, ids[0].1);
        assert_eq!(*term, ids[0].3);
    }
    let distinct: std::collections::HashSet<u64> = ids.iter().map(|i| i.0).collect();
    assert_eq!(distinct.len(), 3, "{ids:x?}");
    // The member list names every member with its peer and client URLs.
    let mut c = cluster.client().await;
    let list = c.member_list().await.expect("member list");
    let mut listed: Vec<(String, Vec<String>, Vec<String>)> = list
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.peer_urls().to_vec(), m.client_urls().to_vec()))
        .collect();
    listed.sort();
    let expected: Vec<(String, Vec<String>, Vec<String>)> =
        cluster.seats.iter().map(|s| (s.name.clone(), vec![s.peer_url()], vec![s.client_url()])).collect();
    assert_eq!(listed, expected);
    // etcd's peer metrics: two active peers each, and round trips measured.
    for ep in &endpoints {
        let addr = ep.trim_start_matches("http://");
        let (code, body) = ferrocd_tests::http::try_http_get(addr, "/metrics").await.expect("metrics");
        assert_eq!(code, 200);
        let active = body.lines().filter(|l| l.starts_with("etcd_network_active_peers{") && l.ends_with(" 1")).count();
        assert_eq!(active, 2, "{ep}: active peers:\n{body}");
        assert!(
            body.lines().any(|l| l.starts_with("etcd_network_peer_round_trip_time_seconds_count{")),
            "{ep}: no round-trip samples"
        );
        assert!(body.contains("etcd_network_peer_sent_bytes_total{"), "{ep}: no sent bytes");
    }
    // Serializable reads on a follower see a write once it has applied it.
    let follower = (leader + 1) % 3;
    let mut f = client_of(&endpoints[follower]).await;
    f.put("via-follower", "v", None).await.expect("put through a follower");
    let got = f.get("via-follower", Some(GetOptions::new().with_serializable())).await.expect("get");
    assert_eq!(got.kvs().len(), 1, "a follower answered a write before applying it");
}

#[tokio::test]
async fn member_ids_and_the_member_list_match_etcds_for_the_same_flags() {
    let token = ["--initial-cluster-token", "cluster-ids-test"];
    let Some(etcd) = Cluster::etcd(3, &token).await else { return };
    let ferrocd = Cluster::ferrocd(3, &token).await;
    let etcdctl = tools::require_tool("etcdctl-3.5").expect("etcdctl 3.5");
    let list = |cluster: &Cluster| {
        let json = etcdctl::run(&etcdctl, &cluster.endpoints()[0], &["member", "list", "-w", "json"], None).json();
        (json["header"]["cluster_id"].as_u64().expect("cluster id"), etcdctl::listed_members(&json))
    };
    // The IDs depend on the peer URLs (the ports differ): both servers'
    // IDs must be etcd's derivation of their own flags.
    for (who, cluster) in [("etcd", &etcd), ("ferrocd", &ferrocd)] {
        let (cluster_id, members) = list(cluster);
        let mut ids = Vec::new();
        for m in &members {
            let flags = ferrocd::config::InitialMember { name: m.name.clone(), peer_urls: m.peer_urls.clone() };
            assert_eq!(m.id, ferrocd::ids::member_id(&flags, token[1]), "{who}: {}", m.name);
            assert!(!m.is_learner, "{who}: {}", m.name);
            assert_eq!(m.client_urls.len(), 1, "{who}: {} lists no client URL", m.name);
            ids.push(m.id);
        }
        assert_eq!(members.len(), 3);
        assert_eq!(cluster_id, ferrocd::ids::cluster_id(&ids), "{who}: cluster ID");
    }
}

/// `endpoint status --cluster`, `endpoint health --cluster` and
/// `move-leader` as etcdctl 3.5 shows them, for etcd 3.5.1 and ferrocd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_endpoint_status_health_and_move_leader_read_as_for_etcd() {
    let Some(mut etcd) = Cluster::etcd(3, &[]).await else { return };
    let mut ferrocd = Cluster::ferrocd(3, &[]).await;
    let etcdctl = tools::require_tool("etcdctl-3.5").expect("etcdctl 3.5");
    let mut shapes = Vec::new();
    for cluster in [&mut etcd, &mut ferrocd] {
        let leader = cluster.leader(AGREE).await;
        let ep = cluster.endpoints()[leader].clone();
        let members =
            etcdctl::listed_members(&etcdctl::run(&etcdctl, &ep, &["member", "list", "-w", "json"], None).json());
        let status = etcdctl::run(&etcdctl, &ep, &["endpoint", "status", "--cluster", "-w", "json"], None).json();
        let statuses = status.as_array().expect("one status per member");
        let mut ids: Vec<u64> =
            statuses.iter().map(|s| s["Status"]["header"]["member_id"].as_u64().expect("member id")).collect();
        ids.sort_unstable();
        assert_eq!(ids, members.iter().map(|m| m.id).collect::<Vec<_>>());
        let leaders: std::collections::HashSet<u64> =
            statuses.iter().map(|s| s["Status"]["leader"].as_u64().unwrap_or(0)).collect();
        assert_eq!(leaders.len(), 1, "members disagree on the leader: {status}");
        let health = etcdctl::run(&etcdctl, &ep, &["endpoint", "health", "--cluster", "-w", "json"], None).json();
        let healthy = health
            .as_array()
            .expect("one health per member")
            .iter()
            .filter(|h| h["health"].as_bool() == Some(true))
            .count();
        // Leadership moves to a follower, then the old leader is not leader.
        let leader_id = *leaders.iter().next().expect("leader");
        let target = members.iter().find(|m| m.id != leader_id).expect("a follower").id;
        let moved = etcdctl::run(&etcdctl, &ep, &["move-leader", &format!("{target:x}")], None).ok();
        let not_leader = etcdctl::run(&etcdctl, &ep, &["move-leader", &format!("{leader_id:x}")], None);
        // MoveLeader sent to a member that does not lead: etcd's "not leader".
        let mut on_old = client_of(&ep).await;
        let refused = on_old.move_leader(target).await.expect_err("MoveLeader on a follower").to_string();
        let new_leader = cluster.leader(AGREE).await;
        let new_id =
            etcdctl::run(&etcdctl, &cluster.endpoints()[new_leader], &["endpoint", "status", "-w", "json"], None)
                .json()[0]["Status"]["header"]["member_id"]
                .as_u64();
        assert_eq!(new_id, Some(target));
        shapes.push((
            statuses.len(),
            healthy,
            moved.trim().replace(&format!("{leader_id:x}"), "OLD").replace(&format!("{target:x}"), "NEW"),
            not_leader.stderr.lines().rfind(|l| l.starts_with("Error:")).unwrap_or_default().replace(&ep, "EP"),
            refused,
        ));
    }
    assert_eq!(shapes[1], shapes[0], "ferrocd (left) vs etcd (right)");
}

/// What reaches the peer port from outside the cluster is refused and
/// logged, and the cluster serves on: a member of another cluster, a peer
/// sending undecodable raft messages, and bytes that are neither a raft
/// stream nor HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_garbage_on_the_peer_port_are_refused() {
    use ferrocd::transport::{client, open, PeerHeader};
    use std::io::Write;
    use tokio::io::AsyncWriteExt;

    let mut cluster = Cluster::ferrocd(3, &[]).await;
    let leader = cluster.leader(AGREE).await;
    let target = (leader + 1) % 3;
    let peer_url = cluster.seats[target].peer_url();
    let mut c = client_of(&cluster.endpoints()[leader]).await;
    let header = c.status().await.expect("status").header().cloned().expect("header");
    // Another cluster's member, on a raft stream and on a gRPC call.
    let stranger = PeerHeader::new(header.cluster_id() ^ 1, 0x5eed);
    let err = open(&peer_url, stranger, None).await.err().expect("another cluster is refused");
    assert_eq!(err.to_string(), "etcdserver: cluster ID mismatch");
    let mut stranger = client(&peer_url, stranger, None).expect("client");
    let err = stranger.probe(ferrocd::proto::ferrocdpb::ProbeRequest {}).await.expect_err("refused");
    assert_eq!(err.message(), "etcdserver: cluster ID mismatch");
    // A member of this cluster (by its header) sending garbage.
    let mut garbled = open(&peer_url, PeerHeader::new(header.cluster_id(), header.member_id()), None)
        .await
        .expect("a member's raft stream opens");
    // One frame (a big-endian length, then the bytes) that is no raft message.
    garbled.out.write_all(b"\0\0\0\x05hello").await.expect("send");
    let err = garbled.back.heard().await.expect_err("garbage is refused");
    assert!(err.to_string().contains("undecodable raft message"), "{err}");
    // Not HTTP/2 at all.
    let addr = peer_url.trim_start_matches("http://").to_string();
    let mut raw = std::net::TcpStream::connect(&addr).expect("connect to the peer port");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage\xff\xfe").expect("write garbage");
    drop(raw);
    // The cluster serves on, and the member said whom it refused.
    c.put("after-strangers", "v", None).await.expect("put");
    cluster.leader(AGREE).await;
    let log = std::fs::read_to_string(cluster.members[target].log_path()).unwrap_or_default();
    assert!(log.contains("refused a peer of another cluster"), "{}", cluster.members[target].log_tail());
}

/// Five members: two of them down, the other three still make a quorum and
/// serve; back, the two catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_keep_serving_with_two_down() {
    let mut cluster = Cluster::ferrocd(5, &[]).await;
    let leader = cluster.leader(AGREE).await;
    let down: Vec<usize> = (0..5).filter(|i| *i != leader).take(2).collect();
    for i in &down {
        cluster.members[*i].kill();
    }
    let mut c = client_of(&cluster.endpoints()[leader]).await;
    let mut acked = Vec::new();
    for i in 0..100 {
        c.put(format!("w/{i}"), "v", None).await.expect("a put with two of five down");
        acked.push(format!("w/{i}"));
    }
    for i in &down {
        cluster.members[*i].restart().await;
    }
    cluster.check_converged(&acked).await;
}
