//! `etcdctl watch` (3.4 and 3.5.1) against ferrocd prints exactly what it
//! prints against a real etcd 3.5.1, for the same writes made by another
//! etcdctl process: prefix with previous values, and history from a revision.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ferrocd_tests::etcdctl::run;
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

/// Runs `etcdctl watch ...` until its output ends with `until`, then stops it.
struct Watch {
    child: std::process::Child,
    output: mpsc::Receiver<u8>,
}

impl Watch {
    fn start(etcdctl: &Path, ep: &str, args: &[&str]) -> Watch {
        let mut child = Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcdctl watch");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while stdout.read(&mut byte).unwrap_or(0) == 1 {
                if tx.send(byte[0]).is_err() {
                    break;
                }
            }
        });
        Watch { child, output }
    }

    fn until(mut self, end: &str) -> String {
        let mut got = Vec::new();
        while !got.ends_with(end.as_bytes()) {
            match self.output.recv_timeout(Duration::from_secs(20)) {
                Ok(b) => got.push(b),
                Err(_) => panic!("etcdctl watch printed only {:?}", String::from_utf8_lossy(&got)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        String::from_utf8_lossy(&got).into_owned()
    }
}

fn scenario(etcdctl: &Path, member: &Member) -> (String, String) {
    let ep = member.endpoint().trim_start_matches("http://").to_string();
    let ctl = |args: &[&str]| run(etcdctl, &ep, args, None).ok();
    ctl(&["put", "app/a", "1"]); // rev 2
    ctl(&["put", "app/a", "2"]); // rev 3
    ctl(&["put", "other", "x"]); // rev 4
                                 // From revision 5 on: the same output whenever the watch is set up.
    let live = Watch::start(etcdctl, &ep, &["app/", "--prefix", "--prev-kv", "--rev", "5"]);
    let history = Watch::start(etcdctl, &ep, &["--rev", "1", "app/a"]);
    ctl(&["put", "app/b", "3"]); // rev 5
    ctl(&["del", "app/a"]); // rev 6
    ctl(&["put", "app/c", "4"]); // rev 7
    (live.until("app/c\n4\n"), history.until("DELETE\napp/a\n\n"))
}

async fn same_as_etcd(etcdctl_name: &str) {
    let Some(etcdctl) = require_tool(etcdctl_name) else { return };
    let Some((etcd, ferrocd)) = Member::etcd_and_ferrocd(&[]).await else { return };
    let want = scenario(&etcdctl, &etcd);
    let got = scenario(&etcdctl, &ferrocd);
    assert_eq!(got, want, "{etcdctl_name} watch output differs (left ferrocd, right etcd)");
    // And it is the output the writes call for.
    assert_eq!(got.0, "PUT\napp/b\n3\nDELETE\napp/a\n2\napp/a\n\nPUT\napp/c\n4\n");
    assert_eq!(got.1, "PUT\napp/a\n1\nPUT\napp/a\n2\nDELETE\napp/a\n\n");
}

#[tokio::test]
async fn etcdctl_3_4_watch() {
    same_as_etcd("etcdctl-3.4").await;
}

#[tokio::test]
async fn etcdctl_3_5_watch() {
    same_as_etcd("etcdctl-3.5").await;
}
