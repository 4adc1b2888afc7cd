//! `etcdctl lease ...` and `put --lease` (3.4 and 3.5.1) against ferrocd.

use std::path::Path;

use ferrocd_tests::etcdctl::run;
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

async fn exercise(etcdctl: &Path) {
    let member = Member::ferrocd(&[]).await;
    let ep = member.endpoint().trim_start_matches("http://").to_string();
    let ctl = |args: &[&str]| run(etcdctl, &ep, args, None);

    let granted = ctl(&["lease", "grant", "60"]).ok();
    // "lease 694d77aa9e38260f granted with TTL(60s)"
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    assert_eq!(granted.trim(), format!("lease {id} granted with TTL(60s)"));
    assert_eq!(ctl(&["put", "--lease", &id, "lk/a", "1"]).ok().trim(), "OK");
    assert_eq!(ctl(&["put", "--lease", &id, "lk/b", "2"]).ok().trim(), "OK");

    let ttl = ctl(&["lease", "timetolive", "--keys", &id]).ok();
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")), "{ttl}");
    assert!(ttl.trim().ends_with("attached keys([lk/a lk/b])"), "{ttl}");
    let list = ctl(&["lease", "list"]).ok();
    assert_eq!(list.lines().collect::<Vec<_>>(), ["found 1 leases", id.as_str()]);
    let kept = ctl(&["lease", "keep-alive", "--once", &id]).ok();
    assert_eq!(kept.trim(), format!("lease {id} keepalived with TTL(60)"));

    let bad = ctl(&["put", "--lease", "1234", "lk/c", "3"]);
    assert!(!bad.success && bad.stderr.contains("etcdserver: requested lease not found"), "{}", bad.stderr);

    assert_eq!(ctl(&["lease", "revoke", &id]).ok().trim(), format!("lease {id} revoked"));
    assert_eq!(ctl(&["get", "lk/", "--prefix", "--keys-only"]).ok().trim(), "");
    let gone = ctl(&["lease", "timetolive", &id]).ok();
    assert_eq!(gone.trim(), format!("lease {id} already expired"));
}

#[tokio::test]
async fn etcdctl_3_4_lease() {
    let Some(etcdctl) = require_tool("etcdctl-3.4") else { return };
    exercise(&etcdctl).await;
}

#[tokio::test]
async fn etcdctl_3_5_lease() {
    let Some(etcdctl) = require_tool("etcdctl-3.5") else { return };
    exercise(&etcdctl).await;
}
