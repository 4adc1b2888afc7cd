//! kube-apiserver on etcd 3.5.1 and on ferrocd, side by side in one run:
//! how long the same kubectl work takes on each (objects created, listed,
//! patched and deleted by several kubectl processes at once), and when a
//! watch on them all has seen every change.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::kube::{object_list, ApiServer};

/// kubectl processes writing at once, each in a namespace of its own.
const WRITERS: usize = 8;
const LISTS: u32 = 3;

#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub etcd: PathBuf,
    pub ferrocd: PathBuf,
    /// ConfigMaps in all.
    pub objects: usize,
    pub rounds: usize,
    pub members: usize,
}

const PHASES: [&str; 5] = [
    "create (8 kubectl at once)",
    "list all, 500 per page",
    "label = patch each (8 kubectl at once)",
    "delete (8 kubectl at once)",
    "watch has seen every change, from the first create",
];

/// Runs `args(i)` as kubectl in `WRITERS` processes at once; returns how
/// long the slowest took.
fn in_parallel(api: &ApiServer, args: impl Fn(usize) -> (Vec<String>, Option<String>) + Sync) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..WRITERS)
            .map(|i| {
                let args = &args;
                s.spawn(move || {
                    let (argv, input) = args(i);
                    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                    let out = match &input {
                        Some(text) => api.kubectl_with_input(&argv, text),
                        None => api.kubectl(&argv),
                    };
                    assert!(out.success, "kubectl {argv:?} failed: {}", out.stderr);
                })
            })
            .collect();
        for r in runs {
            r.join().expect("kubectl thread");
        }
    });
    started.elapsed()
}

async fn measure(bin: &Path, o: &KubeOptions) -> [Duration; 5] {
    let cluster = Cluster::start(bin.to_path_buf(), o.members, &["--snapshot-count", "10000"]).await;
    let api = ApiServer::start(&cluster.endpoints(), &[]).await.expect("kube-apiserver: run scripts/install-kube.sh");
    let per = o.objects / WRITERS;
    for i in 0..WRITERS {
        let out = api.kubectl(&["create", "namespace", &format!("b{i}")]);
        assert!(out.success, "create namespace: {}", out.stderr);
    }
    let watch = api.watch(&["get", "configmaps", "-A"]);
    let changes = 3 * per * WRITERS;
    let watched = std::thread::scope(|s| {
        let waiter = s.spawn(move || {
            let mut seen = 0;
            let events = watch.until(Duration::from_secs(600), |e| {
                seen += usize::from(e["object"]["metadata"]["namespace"].as_str().is_some_and(|n| n.starts_with('b')));
                seen >= changes
            });
            (Instant::now(), events.len())
        });
        let started = Instant::now();
        let create = in_parallel(&api, |i| {
            (
                vec!["create".into(), "-f".into(), "-".into()],
                Some(object_list("ConfigMap", &format!("b{i}"), "cm", per, |_| {
                    format!("  data: {{v: \"{}\"}}\n", "x".repeat(200))
                })),
            )
        });
        let t = Instant::now();
        for _ in 0..LISTS {
            let out = api.kubectl(&["get", "configmaps", "-A", "--chunk-size=500", "-o", "name"]);
            assert!(out.success && out.stdout.lines().count() >= per * WRITERS, "list: {}", out.stderr);
        }
        let list = t.elapsed() / LISTS;
        let patch = in_parallel(&api, |i| {
            (["label", "configmaps", "--all", "-n", &format!("b{i}"), "round=two"].map(String::from).to_vec(), None)
        });
        let delete = in_parallel(&api, |i| {
            (["delete", "configmaps", "--all", "--wait=false", "-n", &format!("b{i}")].map(String::from).to_vec(), None)
        });
        let (at, events) = waiter.join().expect("watch thread");
        assert!(events >= changes, "the watch saw {events} of {changes} changes");
        [create, list, patch, delete, at - started]
    });
    drop(api);
    drop(cluster);
    watched
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub async fn kube(o: &KubeOptions) -> String {
    let mut times: [Vec<[Duration; 5]>; 2] = [Vec::new(), Vec::new()];
    for round in 0..o.rounds.max(1) {
        // Alternate which goes first.
        for k in [round % 2, 1 - round % 2] {
            let bin = if k == 0 { &o.etcd } else { &o.ferrocd };
            times[k].push(measure(bin, o).await);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kube-apiserver 1.20.2 on {} member(s), {} ConfigMaps of 200 bytes, medians of {} rounds (seconds)\n",
        o.members,
        o.objects / WRITERS * WRITERS,
        o.rounds.max(1)
    );
    let _ = writeln!(out, "| phase | on etcd | on ferrocd | ratio etcd/ferrocd |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (p, name) in PHASES.iter().enumerate() {
        let e = median(times[0].iter().map(|t| t[p]).collect());
        let f = median(times[1].iter().map(|t| t[p]).collect());
        let _ = writeln!(
            out,
            "| {name} | {:.2} | {:.2} | {:.2} |",
            e.as_secs_f64(),
            f.as_secs_f64(),
            e.as_secs_f64() / f.as_secs_f64().max(1e-9)
        );
    }
    out
}
