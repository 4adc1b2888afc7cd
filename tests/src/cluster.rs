//! A cluster of real server processes on loopback (ferrocd, or etcd for
//! comparison): each member with its own ports and data dir; members can be
//! killed, stopped, restarted, wiped, added and removed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::member::{Member, Seat};
use crate::netns::Net;
use crate::tools;

pub struct Cluster {
    bin: PathBuf,
    extra: Vec<String>,
    pub seats: Vec<Seat>,
    pub members: Vec<Member>,
    /// The private network members run in, when they can be cut off
    /// (dropped after the members, which are stopped first).
    pub net: Option<Net>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Members first: a namespace lives on while a process runs in it.
        for m in &mut self.members {
            m.kill();
        }
    }
}

impl Cluster {
    /// `n` ferrocd members started together as a new cluster.
    pub async fn ferrocd(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start(tools::ferrocd_bin(), n, extra).await
    }

    /// `n` etcd 3.5.1 members, for tests that compare; None (the test
    /// skips) when etcd is not installed, outside CI.
    pub async fn etcd(n: usize, extra: &[&str]) -> Option<Cluster> {
        Some(Cluster::start(tools::require_tool("etcd-3.5")?, n, extra).await)
    }

    /// `n` ferrocd members, each in a network namespace of its own, so
    /// that `net.cut` can partition them; None (the test skips) where
    /// namespaces cannot be made (not root, no `ip`), outside CI.
    pub async fn ferrocd_partitionable(n: usize, extra: &[&str]) -> Option<Cluster> {
        let net = match Net::create(n) {
            Ok(net) => net,
            Err(e) => {
                tools::missing(&format!("cannot make network namespaces for a partition test: {e}"));
                return None;
            }
        };
        let seats = (0..n).map(|i| Seat::in_netns(&format!("m{i}"), &net.member_ip(i), &net.namespace(i))).collect();
        let mut cluster = Cluster::start_at(tools::ferrocd_bin(), seats, extra, None).await;
        cluster.net = Some(net);
        Some(cluster)
    }

    /// Starts `n` members of `bin` (which takes etcd's flags) as one new cluster.
    pub async fn start(bin: PathBuf, n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_on_cpus(bin, n, extra, None).await
    }

    /// Like `start`, every member on the given CPUs only (a `taskset -c` list).
    pub async fn start_on_cpus(bin: PathBuf, n: usize, extra: &[&str], cpus: Option<&str>) -> Cluster {
        let seats: Vec<Seat> = (0..n).map(|i| Seat::new(&format!("m{i}"))).collect();
        Cluster::start_at(bin, seats, extra, cpus).await
    }

    /// Starts members at `seats` (e.g. with TLS) as one new cluster.
    pub async fn start_at(bin: PathBuf, seats: Vec<Seat>, extra: &[&str], cpus: Option<&str>) -> Cluster {
        let initial = Cluster::initial_cluster(&seats);
        let mut members: Vec<Member> =
            seats.iter().map(|s| Member::in_cluster(bin.clone(), s, &initial, extra, cpus)).collect();
        for m in &mut members {
            m.launch_process();
        }
        for m in &mut members {
            if let Err(log) = m.wait_ready().await {
                panic!("a cluster member exited while starting:\n{log}");
            }
        }
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Cluster { bin, extra, seats, members, net: None }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.seats.iter().map(Seat::client_url).collect()
    }

    /// A client of every member.
    pub async fn client(&self) -> etcd_client::Client {
        let connect = self.seats.first().and_then(Seat::connect_options);
        etcd_client::Client::connect(self.endpoints(), connect).await.expect("connect to the cluster")
    }

    /// The index of the member all running members agree leads, waiting
    /// up to `wait` for them to agree.
    pub async fn leader(&mut self, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        loop {
            let mut seen = Vec::new();
            for (i, m) in self.members.iter_mut().enumerate() {
                if !m.is_running() {
                    continue;
                }
                let leader = match m.try_client().await {
                    Ok(mut c) => c.status().await.map(|s| (s.leader(), s.header().map_or(0, |h| h.member_id()))).ok(),
                    Err(_) => None,
                };
                seen.push((i, leader));
            }
            let ids: Vec<Option<(u64, u64)>> = seen.iter().map(|(_, l)| *l).collect();
            if let Some(Some((leader, _))) = ids.first() {
                if *leader != 0 && ids.iter().all(|l| matches!(l, Some((x, _)) if x == leader)) {
                    if let Some((i, _)) = seen.iter().find(|(_, l)| matches!(l, Some((_, me)) if me == leader)) {
                        return *i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "members did not agree on a leader in {wait:?}: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running member has applied what the leader has,
    /// then checks that each holds every key in `acked` and that all agree
    /// on HashKV at the same revision.
    pub async fn check_converged(&mut self, acked: &[String]) {
        let leader = self.leader(Duration::from_secs(30)).await;
        let mut lc = self.members[leader].client().await;
        let target =
            lc.get("w/", None).await.expect("linearizable get on the leader").header().map_or(0, |h| h.revision());
        let mut hashes = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            if !m.is_running() {
                continue;
            }
            let mut c = m.client().await;
            let serializable = || etcd_client::GetOptions::new().with_prefix().with_keys_only().with_serializable();
            let deadline = Instant::now() + Duration::from_secs(30);
            let keys = loop {
                let got = c.get("w/", Some(serializable())).await.expect("serializable get");
                if got.header().map_or(0, |h| h.revision()) >= target {
                    break got.kvs().iter().map(|kv| kv.key().to_vec()).collect::<std::collections::HashSet<_>>();
                }
                assert!(Instant::now() < deadline, "member {i} did not catch up to revision {target}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let missing: Vec<&String> = acked.iter().filter(|k| !keys.contains(k.as_bytes())).collect();
            assert!(
                missing.is_empty(),
                "member {i} lost {} acknowledged writes, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            let h = c.hash_kv(target).await.expect("hash kv");
            hashes.push((i, h.hash(), h.compact_version()));
        }
        assert!(
            hashes.windows(2).all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2)),
            "HashKV at revision {target} differs: {hashes:?}"
        );
    }

    /// `--initial-cluster` for the members in `seats`.
    fn initial_cluster<'a>(seats: impl IntoIterator<Item = &'a Seat>) -> String {
        seats.into_iter().map(Seat::cluster_entry).collect::<Vec<_>>().join(",")
    }

    /// Starts a new member that joins the running cluster (after a `member
    /// add` for `seat`), with `--initial-cluster-state existing`; returns
    /// its index.
    pub async fn join(&mut self, seat: Seat) -> usize {
        let initial = Cluster::initial_cluster(self.seats.iter().chain([&seat]));
        let mut extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        extra.extend(["--initial-cluster-state", "existing"]);
        let mut m = Member::in_cluster(self.bin.clone(), &seat, &initial, &extra, None);
        m.launch_process();
        if let Err(log) = m.wait_ready().await {
            panic!("the joining member exited while starting:\n{log}");
        }
        self.seats.push(seat);
        self.members.push(m);
        self.members.len() - 1
    }
}
