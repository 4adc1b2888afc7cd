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
