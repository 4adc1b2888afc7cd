//! The status the operator reports: members as the cluster sees them,
//! Available / Progressing / Degraded conditions and a phase, from one
//! observation and the step chosen on it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{EtcdClusterStatus, MemberStatus};
use crate::names::Names;
use crate::observe::Observation;
use crate::plan::Action;

/// The status after `action` was chosen (and `outcome` came of it).
pub fn status(
    names: &Names,
    generation: Option<i64>,
    previous: Option<&EtcdClusterStatus>,
    obs: &Observation,
    action: &Action,
    outcome: &Result<(), String>,
) -> EtcdClusterStatus {
    let o = &obs.observed;
    let mut members = Vec::new();
    let (mut leader, mut cluster_id, mut version) = (None, None, None);
    if let Some(m) = &obs.membership {
        let lead = m.leader();
        for l in &m.members {
            let name = l.pod(names).unwrap_or_else(|| l.name.clone());
            let state = m.state(l.id);
            if Some(l.id) == lead {
                leader = Some(name.clone());
            }
            members.push(MemberStatus {
                name,
                id: format!("{:x}", l.id),
                peer_urls: l.peer_urls.clone(),
                client_urls: l.client_urls.clone(),
                learner: l.learner,
                leader: Some(l.id) == lead,
                healthy: m.healthy(l.id),
                version: state.map(|s| s.version.clone()),
                db_size: state.map(|s| s.db_size),
            });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        cluster_id = Some(format!("{:x}", m.cluster_id));
        version = m.oldest_version();
    }
    let voters = members.iter().filter(|m| !m.learner).count();
    let ready = members.iter().filter(|m| !m.learner && m.healthy).count();
    let quorate = voters > 0 && ready > voters / 2;
    let target = match action {
        Action::LockTarget(t) if outcome.is_ok() => t.clone(),
        _ => o.target.clone(),
    };
    let now = Time(Timestamp::now());
    let old = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" }.to_string();
        // A new reason is a new transition too: how long the quorum has been
        // lost is read from here, and a pause is no quorum loss.
        let same = |c: &&Condition| c.type_ == type_ && c.status == status && c.reason == reason;
        let since = old.iter().find(same).map(|c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: since.unwrap_or_else(|| now.clone()),
        }
    };
    let paused = target.replicas == 0;
    let available = match (&obs.membership, quorate) {
        _ if paused => condition("Available", false, "Paused", "replicas is 0: the members are stopped".into()),
        (None, _) if !o.bootstrapped => {
            condition("Available", false, "Bootstrapping", "the first member is starting".into())
        }
        (None, _) => condition("Available", false, "ClusterUnreachable", "no member answers".into()),
        (Some(_), false) => condition(
            "Available",
            false,
            "QuorumLost",
            format!("{ready} of {voters} voting members are healthy; a quorum is {}", voters / 2 + 1),
        ),
        (Some(_), true) => {
            condition("Available", true, "QuorumHealthy", format!("{ready} of {voters} voting members are healthy"))
        }
    };
    let (busy, reason, message) = progress(action, outcome);
    let progressing = condition("Progressing", busy, reason, message);
    let unhealthy: Vec<&str> = members.iter().filter(|m| !m.healthy).map(|m| m.name.as_str()).collect();
    let wanted = usize::try_from(target.replicas).unwrap_or(0);
    let degraded = if !unhealthy.is_empty() {
        condition("Degraded", true, "MemberUnhealthy", format!("not healthy: {}", unhealthy.join(", ")))
    } else if !paused && voters < wanted {
        condition("Degraded", true, "MembersMissing", format!("{voters} of {wanted} voting members"))
    } else {
        condition("Degraded", false, "AllMembersHealthy", "every member is healthy".into())
    };
    let phase = if paused {
        "Paused"
    } else if obs.membership.is_none() && !o.bootstrapped {
        "Bootstrapping"
    } else if !quorate {
        "QuorumLost"
    } else {
        match action {
            Action::AddLearner { .. } | Action::Promote { .. } => "Scaling",
            Action::RemoveMember { why, .. } if why == "scale down" => "Scaling",
            Action::RemoveMember { .. } | Action::ForceNewCluster { .. } => "Recovering",
            Action::MoveLeader { .. } => "Updating",
            Action::DeletePod { why, .. } if why.starts_with("rolling") => "Updating",
            _ if voters != wanted => "Scaling",
            _ if !unhealthy.is_empty() => "Recovering",
            _ => "Running",
        }
    };
    EtcdClusterStatus {
        phase: phase.into(),
        conditions: vec![available, progressing, degraded],
        members,
        leader,
        ready_members: i32::try_from(ready).unwrap_or(i32::MAX),
        cluster_id,
        version,
        selector: names.selector(),
        observed_generation: generation,
        target: Some(target),
        // Filled in by the controller, which knows the spec's Secrets.
        tls: None,
    }
}

/// Progressing: whether a step is under way, and which.
fn progress(action: &Action, outcome: &Result<(), String>) -> (bool, &'static str, String) {
    let (reason, message) = describe(action);
    match (action, outcome) {
        (Action::Idle | Action::Refuse { .. }, _) => (false, reason, message),
        (_, Err(e)) => (true, reason, format!("{message}: {e}")),
        _ => (true, reason, message),
    }
}

/// A step's reason (PascalCase, for conditions and Events) and message.
pub fn describe(action: &Action) -> (&'static str, String) {
    match action {
        Action::CreateSeed { name } => ("Bootstrapping", format!("starting {name} as the first member")),
        Action::MarkBootstrapped => ("Bootstrapped", "the cluster has a leader; new members join it".into()),
        Action::AddLearner { name } => ("MemberAdded", format!("added {name} as a learner")),
        Action::CreatePod { name } => ("PodCreated", format!("started the pod of member {name}")),
        Action::Promote { name, .. } => ("MemberPromoted", format!("promoted learner {name} to voter")),
        Action::MoveLeader { from, to_name, .. } => {
            ("LeaderMoved", format!("moved leadership from {from} to {to_name}"))
        }
        Action::RemoveMember { name, why, .. } => ("MemberRemoved", format!("removed member {name}: {why}")),
        Action::ForceNewCluster { name } => (
            "QuorumRecovery",
            format!("restarted {name}, the most advanced member left, as a new one-member cluster from its data"),
        ),
        Action::DeletePod { name, why } => ("PodDeleted", format!("deleted pod {name}: {why}")),
        Action::DeleteClaim { name } => ("ClaimDeleted", format!("deleted the volume claim of removed member {name}")),
        Action::LockTarget(t) => {
            ("TargetLocked", format!("working toward {} members at revision {}", t.replicas, t.revision))
        }
        Action::Wait { reason } => ("Waiting", reason.clone()),
        Action::Refuse { reason } => ("SpecRefused", reason.clone()),
        Action::Idle => ("Converged", "the cluster is what the spec asks for".into()),
    }
}
