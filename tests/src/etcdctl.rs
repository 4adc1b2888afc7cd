//! Runs an etcdctl binary against an endpoint.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("etcdctl printed no JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }

    /// stdout of a command that must succeed.
    pub fn ok(self) -> String {
        assert!(self.success, "etcdctl failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self.stdout
    }
}

pub fn run(etcdctl: &Path, endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", etcdctl.display()));
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("etcdctl output");
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A member as `etcdctl member list -w json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The members in `member list -w json` output, sorted by ID.
pub fn listed_members(json: &serde_json::Value) -> Vec<ListedMember> {
    let urls = |m: &serde_json::Value, k: &str| -> Vec<String> {
        m[k].as_array().map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let mut out: Vec<ListedMember> = json["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| ListedMember {
            id: m["ID"].as_u64().expect("ID"),
            name: m["name"].as_str().unwrap_or_default().to_string(),
            peer_urls: urls(m, "peerURLs"),
            client_urls: urls(m, "clientURLs"),
            is_learner: m["isLearner"].as_bool().unwrap_or(false),
        })
        .collect();
    out.sort();
    out
}
