//! `etcdctl check perf --load=s` (3.5.1) runs its whole minute against
//! ferrocd: leased puts from 50 clients, then a prefix delete. Its PASS/FAIL
//! verdict is a speed judgement and is not asserted here (speed is the
//! benchmark's job); every request must succeed and the summary must print.

use ferrocd_tests::etcdctl::run;
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

#[tokio::test]
async fn check_perf_small_load_runs_to_the_end() {
    let Some(etcdctl) = require_tool("etcdctl-3.5") else { return };
    let member = Member::ferrocd(&[]).await;
    let ep = member.endpoint().trim_start_matches("http://").to_string();
    let out = tokio::task::spawn_blocking(move || run(&etcdctl, &ep, &["check", "perf", "--load=s"], None))
        .await
        .expect("etcdctl");
    let text = format!("{}\n{}", out.stdout, out.stderr);
    for line in ["Throughput is", "Slowest request took", "Stddev is"] {
        assert!(text.contains(line), "no {line:?} in:\n{}", &text[text.len().saturating_sub(2000)..]);
    }
    assert!(!text.to_lowercase().contains("error"), "{}", &text[text.len().saturating_sub(2000)..]);
    // It cleans up after itself: nothing left under its prefix.
    let mut c = member.client().await;
    let left = c.get("/etcdctl-check-perf/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(left.count(), 0);
}
