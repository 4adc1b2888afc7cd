//! `etcdctl alarm list/disarm` and `endpoint health` (3.4 and 3.5.1) after
//! a small quota fills up: NOSPACE is raised, refuses puts, reads still work,
//! and disarming clears it.

use std::path::Path;

use ferrocd_tests::etcdctl::run;
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

/// etcdctl 3.5's `endpoint health` also lists alarms; 3.4's only reads a key.
async fn exercise(etcdctl: &Path, health_sees_alarms: bool) {
    // A quota far below any real backend: the first put raises NOSPACE.
    let member = Member::ferrocd(&["--quota-backend-bytes", "1"]).await;
    let ep = member.endpoint().trim_start_matches("http://").to_string();
    let ctl = |args: &[&str]| run(etcdctl, &ep, args, None);

    let full = ctl(&["put", "k", "v"]);
    assert!(!full.success && full.stderr.contains("etcdserver: mvcc: database space exceeded"), "{}", full.stderr);
    let id = ctl(&["endpoint", "status", "-w", "json"]).json()[0]["Status"]["header"]["member_id"]
        .as_u64()
        .expect("member id");
    let alarm = format!("memberID:{id} alarm:NOSPACE");
    assert_eq!(ctl(&["alarm", "list"]).ok().trim(), alarm);
    assert!(ctl(&["get", "k"]).success, "reads still work under NOSPACE");
    let health = ctl(&["endpoint", "health"]);
    let said = format!("{}{}", health.stdout, health.stderr);
    if health_sees_alarms {
        assert!(!health.success && said.contains("NOSPACE"), "NOSPACE makes the endpoint unhealthy:\n{said}");
    } else {
        assert!(health.success && said.contains("is healthy"), "{said}");
    }

    assert_eq!(ctl(&["alarm", "disarm"]).ok().trim(), alarm);
    assert_eq!(ctl(&["alarm", "list"]).ok().trim(), "");
    assert!(ctl(&["endpoint", "health"]).success);
}

#[tokio::test]
async fn etcdctl_3_4_alarm() {
    let Some(etcdctl) = require_tool("etcdctl-3.4") else { return };
    exercise(&etcdctl, false).await;
}

#[tokio::test]
async fn etcdctl_3_5_alarm() {
    let Some(etcdctl) = require_tool("etcdctl-3.5") else { return };
    exercise(&etcdctl, true).await;
}
