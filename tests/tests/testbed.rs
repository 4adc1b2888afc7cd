//! The local Kubernetes test bed: a real control plane on ferrocd and a
//! node that registers and stays Ready; `scripts/kube-testbed.sh up|down`
//! brings the same up for a person and leaves nothing running.

use std::process::Command;
use std::time::Duration;

use ferrocd_tests::testbed::{node, TestBed};
use ferrocd_tests::tools;

fn alive(pid: &str) -> bool {
    Command::new("kill").args(["-0", pid]).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registers_and_stays_ready_on_a_control_plane_on_ferrocd() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(bed) = TestBed::start(dir.path()).await else { return };
    let nodes = bed.kubectl(&["get", "nodes", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&nodes.stdout).expect("nodes JSON");
    let names: Vec<&str> =
        nodes["items"].as_array().expect("items").iter().filter_map(|n| n["metadata"]["name"].as_str()).collect();
    assert_eq!(names, [node::NODE_NAME]);
    // Past the node lifecycle controller's 40 s grace period, it is still
    // Ready: the heartbeats (status and Lease) keep it so.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let ready = bed.kubectl(&[
        "get",
        "node",
        node::NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready.stdout.trim(), "True", "{}", ready.stderr);
    // The controllers work: a namespace gets its default service account token.
    assert!(bed.kubectl(&["create", "namespace", "t"]).success);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sa = bed.kubectl(&["get", "serviceaccount", "default", "-n", "t", "-o", "jsonpath={.secrets[0].name}"]);
        if !sa.stdout.trim().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no token for the new namespace's service account");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bed.stop();
}

#[test]
fn the_script_brings_the_test_bed_up_and_down() {
    if tools::require_tool("kubectl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let script = tools::workspace_root().join("scripts/kube-testbed.sh");
    let run = |arg: &str| {
        Command::new(&script).arg(arg).env("TESTBED_DIR", dir.path()).output().expect("run kube-testbed.sh")
    };
    let up = run("up");
    let log = std::fs::read_to_string(dir.path().join("testbed.log")).unwrap_or_default();
    if !up.status.success() && log.contains("SKIPPED") {
        return;
    }
    assert!(up.status.success(), "up failed: {}\n{log}", String::from_utf8_lossy(&up.stderr));
    let kubeconfig = String::from_utf8_lossy(&up.stdout).trim().to_string();
    assert!(
        std::path::Path::new(&kubeconfig).is_absolute() && std::path::Path::new(&kubeconfig).is_file(),
        "{kubeconfig}"
    );
    let pid = std::fs::read_to_string(dir.path().join("testbed.pid")).expect("pid file").trim().to_string();
    let kubectl = tools::require_tool("kubectl").expect("kubectl");
    let nodes = Command::new(kubectl)
        .arg(format!("--kubeconfig={kubeconfig}"))
        .args(["get", "nodes"])
        .env("HOME", dir.path())
        .output()
        .expect("kubectl");
    let shown = String::from_utf8_lossy(&nodes.stdout);
    // Read everything the test bed started before taking it down.
    let children = Command::new("pgrep")
        .args(["-s", &pid])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let down = run("down");
    assert!(down.status.success(), "down failed: {}", String::from_utf8_lossy(&down.stderr));
    assert!(shown.contains(node::NODE_NAME) && shown.contains("Ready"), "kubectl get nodes: {shown}");
    assert!(!alive(&pid), "the test bed still runs after down");
    let left: Vec<&str> = children.lines().filter(|p| alive(p)).collect();
    assert!(left.is_empty(), "processes left running after down: {left:?}");
}
