//! The planner: a pure function from what was observed to the one next safe
//! step. It never does two things at once, never removes or restarts a
//! voter when the rest would lose quorum, adds members only as learners (one
//! at a time) and moves leadership off a member before the operator stops it.

use crate::crd::Target;

/// A member pod as Kubernetes reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    pub name: String,
    /// The member pod template revision it was made from.
    pub revision: String,
    /// Running and passing its readiness probe.
    pub ready: bool,
    /// Restarting again and again without becoming ready.
    pub crash_looping: bool,
    /// Being deleted (grace period running).
    pub deleting: bool,
    /// Started with `--force-new-cluster` (quorum-loss recovery).
    pub forced: bool,
}

/// A member's volume claim.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimView {
    pub name: String,
    pub deleting: bool,
}

/// A member as the cluster reports it (member list + its own status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberView {
    pub id: u64,
    /// Its Pod's name (from its peer URL); None for a member that is not
    /// one of this cluster's pods (added by hand).
    pub pod: Option<String>,
    pub learner: bool,
    /// It has started once (published its name): its data exists somewhere.
    pub started: bool,
    /// It answered its status request.
    pub answered: bool,
    /// It answered and knows a leader.
    pub healthy: bool,
    pub raft_index: u64,
}

/// The cluster, when at least one member answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    pub leader: Option<u64>,
    pub members: Vec<MemberView>,
}

impl ClusterView {
    fn voters(&self) -> impl Iterator<Item = &MemberView> {
        self.members.iter().filter(|m| !m.learner)
    }

    fn healthy_voters(&self) -> usize {
        self.voters().filter(|m| m.healthy).count()
    }

    /// Whether the voters other than `without` (and `without` removed from
    /// the configuration when `removed`) still form a healthy quorum.
    fn quorate_without(&self, without: u64, removed: bool) -> bool {
        let voters = self.voters().count() - usize::from(removed && self.voters().any(|m| m.id == without));
        let healthy = self.voters().filter(|m| m.healthy && m.id != without).count();
        voters > 0 && healthy > voters / 2
    }
}

/// Everything the planner decides on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The target being worked toward (locked while an operation runs).
    pub target: Target,
    /// What the current spec asks for.
    pub desired: Target,
    /// The members' data lives in emptyDirs: a Pod gone is a member lost.
    pub ephemeral: bool,
    /// The cluster exists (its bootstrap ConfigMap or its status says so):
    /// members join it, never found a new one.
    pub bootstrapped: bool,
    /// Names of this cluster's member pods and claims, and the cluster.
    pub pods: Vec<PodView>,
    pub claims: Vec<ClaimView>,
    pub cluster: Option<ClusterView>,
    /// The next free member name.
    pub next_member: String,
    /// The name of the first member (index 0).
    pub seed: String,
    /// Opt-in recovery from a lost quorum, and for how long the quorum has
    /// been lost (from the previous status), and how long a loss must last
    /// before the recovery starts.
    pub recover_quorum: bool,
    pub quorum_lost_for: Option<std::time::Duration>,
    pub quorum_loss_grace: std::time::Duration,
    /// Why the spec cannot be carried out (a change the running cluster's
    /// volumes cannot follow); the API server's own rules say so where it
    /// evaluates them. Members are still healed meanwhile.
    pub refusal: Option<String>,
    /// Why no member pod can be made from the spec at all (TLS changed on a
    /// running cluster, a Secret it names missing): nothing is done, not
    /// even healing, until the spec is fixed.
    pub blocked: Option<String>,
}

/// The one next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the first member as a new one-member cluster.
    CreateSeed {
        name: String,
    },
    /// Record that the cluster exists: members started from now on join it.
    MarkBootstrapped,
    /// Add a member as a learner (its Pod is created next).
    AddLearner {
        name: String,
    },
    /// Start a member's Pod (and its claim) for a member of the cluster.
    CreatePod {
        name: String,
    },
    Promote {
        id: u64,
        name: String,
    },
    /// Hand leadership to another voter before the current leader stops.
    MoveLeader {
        from: String,
        to: u64,
        to_name: String,
    },
    /// Restart the most advanced surviving member as a one-member cluster
    /// keeping its data (`--force-new-cluster`), the way out of a lost
    /// quorum; the others are then replaced.
    ForceNewCluster {
        name: String,
    },
    /// Remove a member from the cluster (scale down or replacement).
    RemoveMember {
        id: u64,
        name: String,
        why: String,
    },
    /// Stop a Pod: it is not a member any more, or it runs an old revision
    /// (it comes back from its claim with the same identity), or the cluster is paused.
    DeletePod {
        name: String,
        why: String,
    },
    DeleteClaim {
        name: String,
    },
    /// Adopt the spec as the new target.
    LockTarget(Target),
    /// Nothing can be done safely now.
    Wait {
        reason: String,
    },
    /// The spec asks for what cannot be done; the cluster stays as it is.
    Refuse {
        reason: String,
    },
    /// The cluster is what the target asks for.
    Idle,
}

impl Action {
    fn wait(reason: impl Into<String>) -> Action {
        Action::Wait { reason: reason.into() }
    }
}

/// The next step toward the target.
pub fn plan(o: &Observed) -> Action {
    if let Some(reason) = &o.blocked {
        return Action::Refuse { reason: reason.clone() };
    }
    if o.target.replicas == 0 {
        return pause(o);
    }
    let Some(cluster) = &o.cluster else { return unreachable(o) };
    let pod = |name: &str| o.pods.iter().find(|p| p.name == name);
    let claim = |name: &str| o.claims.iter().find(|c| c.name == name);
    let member_of = |name: &str| cluster.members.iter().find(|m| m.pod.as_deref() == Some(name));

    // Members started from now on must join, never found a new cluster.
    if !o.bootstrapped {
        return if cluster.leader.is_some() {
            Action::MarkBootstrapped
        } else {
            Action::wait("the first member has no leader yet")
        };
    }
    let voters = cluster.voters().count();
    if cluster.healthy_voters() <= voters / 2 {
        return quorum_lost(o, cluster);
    }
    // Leftovers of removed members: their data must never come back.
    if let Some(p) = o.pods.iter().find(|p| member_of(&p.name).is_none() && !p.deleting) {
        return Action::DeletePod { name: p.name.clone(), why: "not a member of the cluster".into() };
    }
    if let Some(c) = o.claims.iter().find(|c| member_of(&c.name).is_none() && pod(&c.name).is_none() && !c.deleting) {
        return Action::DeleteClaim { name: c.name.clone() };
    }
    // Recovered by force: restarted once more without the flag, which
    // would otherwise drop every member added since at its next start.
    if let Some(p) = o.pods.iter().find(|p| p.forced && !p.deleting) {
        if voters == 1 {
            return Action::DeletePod { name: p.name.clone(), why: "restarting without --force-new-cluster".into() };
        }
    }
    // A member whose data is gone, or that keeps crashing, is replaced:
    // never restarted empty under its old identity.
    let lost = |m: &MemberView, name: &str| {
        let data_gone = if o.ephemeral { pod(name).is_none() } else { claim(name).is_none_or(|c| c.deleting) };
        let crashing = pod(name).is_some_and(|p| p.crash_looping) && !m.healthy;
        m.started && data_gone || crashing
    };
    for m in &cluster.members {
        let Some(name) = &m.pod else { continue };
        if lost(m, name) {
            // One that must wait for quorum does not hold the other steps up.
            if let removal @ Action::RemoveMember { .. } =
                remove(cluster, m, name, "its data is lost or it keeps crashing")
            {
                return removal;
            }
        }
    }
    if let Some(name) = cluster.members.iter().filter_map(|m| m.pod.as_ref()).find(|n| pod(n).is_none()) {
        return Action::CreatePod { name: name.clone() };
    }
    if let Some(l) = cluster.members.iter().find(|m| m.learner) {
        let name = l.pod.clone().unwrap_or_default();
        return if pod(&name).is_some_and(|p| p.ready) && l.healthy {
            Action::Promote { id: l.id, name }
        } else {
            Action::wait(format!("learner {name} is starting"))
        };
    }
    if o.pods.iter().any(|p| p.deleting) {
        return Action::wait("a pod is stopping");
    }
    if let Some(reason) = &o.refusal {
        return Action::Refuse { reason: reason.clone() };
    }
    let unhealthy: Vec<&MemberView> = cluster.members.iter().filter(|m| !m.healthy).collect();
    let target = usize::try_from(o.target.replicas).unwrap_or(0);
    if voters > target {
        return scale_down(cluster);
    }
    // A member broken on an older template (a bad image fixed in the spec)
    // is restarted on the new one: it holds no quorum up.
    let outdated =
        |m: &&&MemberView| m.pod.as_ref().and_then(|n| pod(n)).is_some_and(|p| p.revision != o.desired.revision);
    if let Some(m) = unhealthy.iter().find(outdated) {
        if cluster.quorate_without(m.id, false) {
            let name = m.pod.clone().unwrap_or_default();
            return Action::DeletePod {
                name,
                why: "restarting an unhealthy member onto the new member template".into(),
            };
        }
    }
    if let Some(m) = unhealthy.first() {
        return Action::wait(format!("member {} is not healthy", m.pod.as_deref().unwrap_or("(not ours)")));
    }
    if voters < target {
        return Action::AddLearner { name: o.next_member.clone() };
    }
    if let Some(action) = roll(o, cluster) {
        return action;
    }
    if o.target != o.desired {
        return Action::LockTarget(o.desired.clone());
    }
    Action::Idle
}

/// Too few voters are healthy to commit anything. Members whose pods are
/// missing are started (they may be what is missing); past the grace
/// period, and only when the spec opts in, the most advanced member that
/// answers is restarted as a new one-member cluster.
fn quorum_lost(o: &Observed, cluster: &ClusterView) -> Action {
    let startable = |n: &&String| !o.pods.iter().any(|p| &p.name == *n) && o.claims.iter().any(|c| &c.name == *n);
    if let Some(name) = cluster.members.iter().filter_map(|m| m.pod.as_ref()).find(startable) {
        if !o.ephemeral {
            return Action::CreatePod { name: name.clone() };
        }
    }
    let healthy = cluster.healthy_voters();
    let voters = cluster.voters().count();
    let lost = format!("quorum lost: {healthy} of {voters} voting members are healthy");
    if !o.recover_quorum {
        return Action::wait(format!("{lost}; set spec.quorumLossRecovery to recover from the most advanced member"));
    }
    // One forced member at a time: a second would found a second cluster.
    if let Some(p) = o.pods.iter().find(|p| p.forced) {
        return Action::wait(format!("{lost}; {} is restarting as a new one-member cluster", p.name));
    }
    if o.quorum_lost_for.is_none_or(|d| d < o.quorum_loss_grace) {
        return Action::wait(format!("{lost}; recovering if it lasts {:?}", o.quorum_loss_grace));
    }
    let survivor = cluster
        .voters()
        .filter(|m| m.answered && m.pod.is_some())
        .max_by_key(|m| (m.raft_index, std::cmp::Reverse(m.id)));
    match survivor.and_then(|m| m.pod.clone()) {
        Some(name) => Action::ForceNewCluster { name },
        None => Action::wait(format!("{lost}, and no voter answers to recover from")),
    }
}

/// No member answers.
fn unreachable(o: &Observed) -> Action {
    let has_pod = |name: &str| o.pods.iter().any(|p| p.name == name);
    if !o.bootstrapped {
        return if has_pod(&o.seed) {
            Action::wait("the first member is starting")
        } else {
            Action::CreateSeed { name: o.seed.clone() }
        };
    }
    if o.pods.is_empty() && (o.claims.is_empty() || o.ephemeral) {
        return Action::wait("every member and its data is gone; the cluster cannot be recovered");
    }
    // Members stopped together (a pause, a node restart) start together:
    // each needs the others for quorum.
    match o.claims.iter().find(|c| !c.deleting && !has_pod(&c.name)) {
        Some(c) if !o.ephemeral => Action::CreatePod { name: c.name.clone() },
        _ => Action::wait("no member answers"),
    }
}

/// Replicas 0: every pod stops, followers first; claims and membership stay.
fn pause(o: &Observed) -> Action {
    if o.pods.iter().any(|p| p.deleting) {
        return Action::wait("a pod is stopping");
    }
    let leader = o.cluster.as_ref().and_then(|c| c.leader);
    let leads = |p: &&PodView| {
        o.cluster
            .as_ref()
            .is_some_and(|c| c.members.iter().any(|m| Some(m.id) == leader && m.pod.as_deref() == Some(&p.name)))
    };
    match o.pods.iter().find(|p| !leads(p)).or(o.pods.first()) {
        Some(p) => Action::DeletePod { name: p.name.clone(), why: "the cluster is paused".into() },
        None if o.target != o.desired => Action::LockTarget(o.desired.clone()),
        None => Action::Idle,
    }
}

/// One voter too many: unhealthy first, then a follower, the leader last
/// (after handing leadership over).
fn scale_down(cluster: &ClusterView) -> Action {
    let mut voters: Vec<&MemberView> = cluster.voters().collect();
    // Unhealthy first, then followers, newest first; the leader last.
    voters.sort_by_key(|m| (m.healthy, Some(m.id) == cluster.leader, std::cmp::Reverse(member_index(m))));
    let victim = voters[0];
    let name = victim.pod.clone().unwrap_or_default();
    if Some(victim.id) == cluster.leader {
        return move_leader(cluster, victim, &name);
    }
    remove(cluster, victim, &name, "scale down")
}

/// Removes a member if the rest keeps a healthy quorum (that the change can
/// commit, `plan` checked before anything else).
fn remove(cluster: &ClusterView, m: &MemberView, name: &str, why: &str) -> Action {
    if !cluster.quorate_without(m.id, true) {
        return Action::wait(format!("removing {name} ({why}) would leave the cluster without quorum"));
    }
    Action::RemoveMember { id: m.id, name: name.to_string(), why: why.to_string() }
}

fn member_index(m: &MemberView) -> u32 {
    m.pod.as_deref().and_then(|p| p.rsplit('-').next()).and_then(|i| i.parse().ok()).unwrap_or(0)
}

/// Leadership to the most caught-up healthy voter other than `from`.
fn move_leader(cluster: &ClusterView, from: &MemberView, from_name: &str) -> Action {
    match cluster
        .voters()
        .filter(|m| m.id != from.id && m.healthy)
        .max_by_key(|m| (m.raft_index, std::cmp::Reverse(m.id)))
    {
        Some(to) => {
            Action::MoveLeader { from: from_name.to_string(), to: to.id, to_name: to.pod.clone().unwrap_or_default() }
        }
        None => Action::wait(format!("{from_name} leads and no other voter is healthy to take over")),
    }
}

/// A rolling restart onto the spec's member template (pods are always made
/// from it, so it is the revision to roll to even while a target is
/// locked): one pod at a time, only while every member is healthy,
/// followers first, the leader last.
fn roll(o: &Observed, cluster: &ClusterView) -> Option<Action> {
    let mut outdated: Vec<(&PodView, &MemberView)> = o
        .pods
        .iter()
        .filter(|p| p.revision != o.desired.revision)
        .filter_map(|p| cluster.members.iter().find(|m| m.pod.as_deref() == Some(&p.name)).map(|m| (p, m)))
        .collect();
    outdated.sort_by_key(|(p, m)| (Some(m.id) == cluster.leader, p.name.clone()));
    let (pod, member) = outdated.first()?;
    // A lone voter cannot hand over: its restart is the cluster's.
    let lone = cluster.voters().count() == 1;
    if Some(member.id) == cluster.leader && !lone {
        return Some(move_leader(cluster, member, &pod.name));
    }
    if !member.learner && !lone && !cluster.quorate_without(member.id, false) {
        return Some(Action::wait(format!("restarting {} would leave the rest without quorum", pod.name)));
    }
    Some(Action::DeletePod { name: pod.name.clone(), why: "rolling onto the new member template".into() })
}

#[cfg(test)]
mod tests;
