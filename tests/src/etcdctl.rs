//! Runs an etcdctl binary against an endpoint.

use std::path::Path;
use std::process::Command;

pub use crate::command::Output;

pub fn run(etcdctl: &Path, endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(etcdctl);
    command.env("ETCDCTL_API", "3").arg(format!("--endpoints={endpoint}")).arg("--command-timeout=10s").args(args);
    crate::command::run(command, stdin)
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
