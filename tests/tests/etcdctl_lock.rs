//! `etcdctl lock` and `etcdctl elect` (3.4 and 3.5.1) against ferrocd. Both
//! run clientv3's concurrency recipes client-side on KV, lease and watch.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrocd_tests::etcdctl::run;
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

async fn exercise(etcdctl: &Path) {
    let member = Member::ferrocd(&[]).await;
    let ep = member.endpoint().trim_start_matches("http://").to_string();
    let ctl = |args: &[&str]| run(etcdctl, &ep, args, None);

    // lock: runs the command while holding the lock.
    assert_eq!(ctl(&["lock", "mylock", "echo", "inside"]).ok(), "inside\n");

    // A held lock makes a second `etcdctl lock` wait until it is released.
    let holder = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={ep}"), "lock", "mylock", "sleep", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("etcdctl lock");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = std::time::Instant::now();
    assert!(ctl(&["lock", "mylock", "echo", "second"]).ok().contains("second"));
    assert!(started.elapsed() >= Duration::from_millis(500), "the second lock did not wait for the first");
    let mut holder = holder;
    assert!(holder.wait().expect("holder").success());

    // elect: a candidate becomes leader, `elect -l` sees it.
    let mut candidate = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={ep}"), "elect", "myelection", "alice"])
        .stdout(Stdio::null())
        .spawn()
        .expect("etcdctl elect");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let observed = Command::new("timeout")
        .args(["2", etcdctl.to_str().expect("path"), &format!("--endpoints={ep}"), "elect", "-l", "myelection"])
        .output()
        .expect("etcdctl elect -l");
    let observed = String::from_utf8_lossy(&observed.stdout).into_owned();
    let lines: Vec<&str> = observed.lines().collect();
    assert!(lines.len() >= 2 && lines[0].starts_with("myelection/") && lines[1] == "alice", "{observed}");
    let _ = candidate.kill();
    let _ = candidate.wait();
}

#[tokio::test]
async fn etcdctl_3_4_lock_and_elect() {
    let Some(etcdctl) = require_tool("etcdctl-3.4") else { return };
    exercise(&etcdctl).await;
}

#[tokio::test]
async fn etcdctl_3_5_lock_and_elect() {
    let Some(etcdctl) = require_tool("etcdctl-3.5") else { return };
    exercise(&etcdctl).await;
}
