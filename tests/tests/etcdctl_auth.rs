//! `etcdctl user/role/auth` flows (3.4 and 3.5.1): the same commands against
//! etcd 3.5.1 and ferrocd must print the same output and the same errors.

use std::path::Path;

use ferrocd_tests::etcdctl::run;
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

/// Each command's exit status, output and `Error:` lines (etcdctl's retry
/// logs carry timestamps, so they are left out).
fn session(etcdctl: &Path, endpoint: &str) -> Vec<String> {
    let ep = endpoint.trim_start_matches("http://");
    let steps: &[&[&str]] = &[
        &["user", "add", "root", "--new-user-password=rootpw"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "a", "m"],
        &["role", "grant-permission", "reader", "readwrite", "p/", "--prefix"],
        &["role", "grant-permission", "reader", "write", "foo"],
        &["user", "add", "alice", "--new-user-password=alicepw"],
        &["user", "grant-role", "alice", "reader"],
        &["user", "grant-role", "alice", "ghost"],
        &["put", "b", "1"],
        &["auth", "enable"],
        &["get", "b"],
        &[ALICE, "get", "b"],
        &[ALICE, "put", "p/x", "1"],
        &[ALICE, "get", "p/", "--prefix"],
        &[ALICE, "put", "zoo", "1"],
        &[ALICE, "user", "list"],
        &["--user=alice:wrong", "get", "b"],
        &[ROOT, "user", "list"],
        &[ROOT, "role", "list"],
        &[ROOT, "user", "get", "alice"],
        &[ROOT, "role", "get", "reader"],
        &[ROOT, "role", "get", "root"],
        &[ROOT, "role", "revoke-permission", "reader", "foo"],
        &[ROOT, "role", "revoke-permission", "reader", "foo"],
        &[ROOT, "user", "revoke-role", "alice", "reader"],
        &[ALICE, "get", "b"],
        &[ROOT, "user", "passwd", "alice", "--interactive=false"],
        &["--user=alice:newpw", "user", "get", "alice"],
        &[ROOT, "user", "delete", "root"],
        &[ROOT, "user", "delete", "alice"],
        &[ROOT, "role", "delete", "reader"],
        &[ROOT, "auth", "disable"],
        &["get", "b"],
    ];
    steps
        .iter()
        .map(|args| {
            // `user passwd --interactive=false` reads the new password from stdin.
            let stdin = args.contains(&"passwd").then_some("newpw\n");
            let out = run(etcdctl, ep, args, stdin);
            let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("Error")).collect();
            format!("{args:?} -> success={} out={:?} err={:?}", out.success, out.stdout, errors)
        })
        .collect()
}

async fn matches_etcd(etcdctl: &Path) {
    let Some(etcd_bin) = require_tool("etcd-3.5") else { return };
    let etcd = Member::start(etcd_bin, &[]).await;
    let ferrocd = Member::ferrocd(&["--bcrypt-cost", "4"]).await;
    let want = session(etcdctl, &etcd.endpoint());
    let got = session(etcdctl, &ferrocd.endpoint());
    let diffs: Vec<String> = (0..got.len().max(want.len()))
        .filter(|&i| got.get(i) != want.get(i))
        .map(|i| format!("ferrocd {:?}\n   etcd {:?}", got.get(i), want.get(i)))
        .collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    // The flow did what it says, not only the same as etcd.
    assert!(got[9].contains("Authentication Enabled"), "{}", got[9]);
    assert!(got[11].contains("success=true") && got[11].contains("b\\n1"), "{}", got[11]);
    assert!(got[14].contains("permission denied"), "{}", got[14]);
}

#[tokio::test]
async fn etcdctl_3_4_auth() {
    let Some(etcdctl) = require_tool("etcdctl-3.4") else { return };
    matches_etcd(&etcdctl).await;
}

#[tokio::test]
async fn etcdctl_3_5_auth() {
    let Some(etcdctl) = require_tool("etcdctl-3.5") else { return };
    matches_etcd(&etcdctl).await;
}
