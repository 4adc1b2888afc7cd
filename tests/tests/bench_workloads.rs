//! Each benchmark workload, briefly: the report counts exactly the requests
//! made, and a refused request as an error with the server's status.
//! Watch and lease-keepalive run against both etcd 3.5.1 and ferrocd.

use ferrocd::proto::etcdserverpb::{RangeRequest, RangeResponse};
use ferrocd_tests::bench::grpc::Connection;
use ferrocd_tests::bench::workload::{run, KeySpec, Limit, RunOptions, Workload};
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

fn opts(endpoint: String, total: u64) -> RunOptions {
    RunOptions {
        endpoints: vec![endpoint],
        tls: None,
        conns: 2,
        clients: 8,
        limit: Limit::Total(total),
        progress: false,
    }
}

fn keys(sequential: bool) -> KeySpec {
    KeySpec { key_size: 8, val_size: 64, key_space_size: 1000, sequential }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_workloads_count_exactly() {
    let member = Member::ferrocd(&[]).await;
    let ep = member.endpoint();
    let r = run(&Workload::Put(keys(true)), &opts(ep.clone(), 300)).await.expect("put run");
    assert_eq!((r.ok, r.errors), (300, 0), "{r}");
    assert!(r.throughput > 0.0 && r.p50 <= r.p99 && r.p99 <= r.max);
    let mut c = member.client().await;
    let all =
        c.get(vec![0u8], Some(etcd_client::GetOptions::new().with_from_key().with_count_only())).await.expect("count");
    assert_eq!(all.count(), 300, "300 sequential keys were written");

    let r = run(&Workload::TxnPut { keys: keys(false), ops: 3 }, &opts(ep.clone(), 100)).await.expect("txn run");
    assert_eq!((r.ok, r.errors), (100, 0), "{r}");
    c.put("bench-key", "v", None).await.expect("put");
    for serializable in [false, true] {
        let w = Workload::Range { key: "bench-key".into(), prefix: false, serializable, limit: 0 };
        let r = run(&w, &opts(ep.clone(), 200)).await.expect("range run");
        assert_eq!((r.ok, r.errors), (200, 0), "{r}");
    }
    let prefix = Workload::Range { key: "bench-".into(), prefix: true, serializable: false, limit: 1 };
    let r = run(&prefix, &opts(ep.clone(), 50)).await.expect("prefix range run");
    assert_eq!((r.ok, r.errors), (50, 0), "{r}");
    // What the workloads ask, asked once: the range covers the prefix.
    let mut conn = Connection::open(&ep, None).await.expect("connect");
    let req =
        RangeRequest { key: b"bench-".to_vec(), range_end: ferrocd::api::prefix_end(b"bench-"), ..Default::default() };
    let found: RangeResponse = conn.unary("/etcdserverpb.KV/Range", &req).await.expect("range");
    assert_eq!(found.kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(), [b"bench-key"]);
    let none = RunOptions { endpoints: Vec::new(), ..opts(ep.clone(), 1) };
    assert!(run(&Workload::Put(keys(true)), &none).await.is_err(), "no endpoints fails the run");

    // A value over the request size limit (1.5 MiB) is refused, and said why.
    let big = KeySpec { val_size: 1_700_000, ..keys(true) };
    let r = run(&Workload::Put(big), &opts(ep.clone(), 3)).await.expect("put run");
    assert_eq!((r.ok, r.errors), (0, 3), "{r}");
    assert_eq!(r.error_samples[0], "gRPC status 3: etcdserver: request is too large", "{r}");
    let nowhere = run(&Workload::Put(keys(true)), &opts("http://127.0.0.1:1".into(), 1)).await;
    assert!(nowhere.is_err_and(|e| e.contains("127.0.0.1:1")), "a refused connection fails the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_lease_workloads() {
    let Some(etcd) = require_tool("etcd-3.5") else { return };
    let etcd = Member::start(etcd, &[]).await;
    let w = Workload::Watch { watchers: 20, keys: 4 };
    let r = run(&w, &opts(etcd.endpoint(), 40)).await.expect("watch run");
    // 40 puts over 4 keys, 5 watchers per key: 200 events.
    assert_eq!((r.ok, r.errors), (200, 0), "{r}");
    let r = run(&Workload::LeaseKeepalive, &opts(etcd.endpoint(), 100)).await.expect("lease run");
    assert_eq!((r.ok, r.errors), (100, 0), "{r}");

    let ferrocd = Member::ferrocd(&[]).await;
    let r = run(&w, &opts(ferrocd.endpoint(), 40)).await.expect("watch run");
    assert_eq!((r.ok, r.errors), (200, 0), "{r}");
    let r = run(&Workload::LeaseKeepalive, &opts(ferrocd.endpoint(), 100)).await.expect("lease run");
    assert_eq!((r.ok, r.errors), (100, 0), "{r}");
}

/// The throughput table's workload names.
fn workloads_named<'a>(rows: &[Vec<&'a str>]) -> Vec<&'a str> {
    rows.iter().filter(|r| r.len() == 10).map(|r| r[0]).collect()
}

/// The server CPU table: a row per workload, with both servers' CPU time
/// per request (a short run may round one to 0 ticks, not all of them).
fn assert_cpu_rows(rows: &[Vec<&str>], out: &str) {
    let names = workloads_named(rows);
    let cpu: Vec<&Vec<&str>> = rows.iter().filter(|r| r.len() == 4 && names.contains(&r[0])).collect();
    assert_eq!(cpu.len(), 9, "a server CPU row per workload:\n{out}");
    for side in [1, 2] {
        let us: Vec<f64> = cpu.iter().map(|r| r[side].parse().expect("CPU µs per request")).collect();
        assert!(us.iter().all(|v| *v >= 0.0) && us.iter().sum::<f64>() > 0.0, "server CPU column {side}:\n{out}");
    }
}

/// The comparison end to end, small: every workload ran against both
/// servers in every round, without errors, and the tables are complete;
/// the servers ran on the CPU they were pinned to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_every_workload_against_both_servers() {
    use ferrocd_tests::bench::compare::{compare, CompareOptions};
    let Some(etcd) = require_tool("etcd-3.5") else { return };
    let opts = CompareOptions {
        rounds: 2,
        requests: 200,
        size_keys: 200,
        etcd,
        ferrocd: ferrocd_tests::tools::ferrocd_bin(),
        server_cpus: Some("0".into()),
        members: 1,
        tls: false,
    };
    let out = compare(&opts).await;
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| workload") && !l.starts_with("| figure"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let workloads: Vec<&Vec<&str>> = rows.iter().filter(|r| r.len() == 10).collect();
    assert_eq!(workloads.len(), 9, "one row per workload:\n{out}");
    assert_cpu_rows(&rows, &out);
    for r in workloads {
        assert_no_ferrocd_errors(r, &out);
        for field in [r[2], r[3], r[4], r[6], r[7], r[8]] {
            assert!(field.parse::<f64>().is_ok_and(|v| v > 0.0), "{} has {field:?}:\n{out}", r[0]);
        }
        // Both rounds paired: a lowest and a highest single-round ratio.
        let (lo, hi) = r[5].split_once('–').unwrap_or_else(|| panic!("{} rounds {:?}:\n{out}", r[0], r[5]));
        let (lo, hi): (f64, f64) = (lo.parse().expect("low ratio"), hi.parse().expect("high ratio"));
        assert!(lo > 0.0 && lo <= hi, "{} rounds {lo}–{hi}", r[0]);
    }
    let names = workloads_named(&rows);
    let figures: Vec<&Vec<&str>> = rows.iter().filter(|r| r.len() == 4 && !names.contains(&r[0])).collect();
    assert_eq!(figures.len(), 3, "RSS, data dir and start-up rows:\n{out}");
    assert!(out.contains("After loading 200 keys"), "{out}");
    assert!(out.contains("with ferrocd's own WAL fdatasyncs during those puts"), "{out}");
    assert!(out.contains("CPUs allowed: etcd 0, ferrocd 0, load generator "), "{out}");
}

/// The cluster comparison, small, with TLS on clients and peers: 3-member
/// clusters of both servers take every workload without errors, and the
/// failover time of each is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_three_member_clusters_and_times_a_failover() {
    use ferrocd_tests::bench::compare::{compare, CompareOptions};
    let Some(etcd) = require_tool("etcd-3.5") else { return };
    let opts = CompareOptions {
        rounds: 1,
        requests: 200,
        size_keys: 200,
        etcd,
        ferrocd: ferrocd_tests::tools::ferrocd_bin(),
        server_cpus: None,
        members: 3,
        tls: true,
    };
    let out = compare(&opts).await;
    assert!(out.starts_with("3 members per server"), "{out}");
    assert!(out.contains("TLS on both servers"), "{out}");
    // The 1-client latency target is a single member's.
    assert!(!out.contains("fdatasync p50"), "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| workload"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let workloads: Vec<&Vec<&str>> = rows.iter().filter(|r| r.len() == 10).collect();
    assert_eq!(workloads.len(), 9, "one row per workload:\n{out}");
    assert_cpu_rows(&rows, &out);
    for r in workloads {
        assert_no_ferrocd_errors(r, &out);
    }
    let failover = out.lines().find(|l| l.starts_with("From kill -9 of the leader")).expect("a failover line");
    let ms: Vec<f64> =
        failover.split(|c: char| !c.is_ascii_digit() && c != '.').filter_map(|w| w.parse().ok()).collect();
    // "... (median of 5, --election-timeout 1000): etcd E ms, ferrocd F ms, ratio R"
    assert!(ms.len() >= 5 && ms[3] > 0.0 && ms[4] > 0.0, "{failover}");
}

/// A row's "errors etcd/ferrocd" column shows none for ferrocd (etcd's are
/// etcd's: its lease keepalives on a loaded 3-member cluster have failed
/// now and then).
fn assert_no_ferrocd_errors(row: &[&str], out: &str) {
    assert!(row[9].ends_with("/0"), "ferrocd errors in {}:\n{out}", row[0]);
}
