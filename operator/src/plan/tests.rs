//! Table tests of the planner, and a model of a cluster driven by the planner
//! alone through whole scale sequences, checking after every step that no
//! quorum was lost and at most one learner existed.

use std::time::Duration;

use super::*;

fn target(replicas: i32, revision: &str) -> Target {
    Target { replicas, revision: revision.into(), generation: 1 }
}

fn pod(name: &str) -> PodView {
    PodView { name: name.into(), revision: "r1".into(), ready: true, ..Default::default() }
}

fn claim(name: &str) -> ClaimView {
    ClaimView { name: name.into(), deleting: false }
}

fn voter(i: u64) -> MemberView {
    MemberView {
        id: 100 + i,
        pod: Some(format!("c-{i}")),
        learner: false,
        started: true,
        answered: true,
        healthy: true,
        raft_index: 50,
    }
}

/// A healthy cluster of voters c-0..c-(n-1) led by c-0, at revision r1.
fn running(n: u64, replicas: i32) -> Observed {
    Observed {
        target: target(replicas, "r1"),
        desired: target(replicas, "r1"),
        ephemeral: false,
        bootstrapped: true,
        pods: (0..n).map(|i| pod(&format!("c-{i}"))).collect(),
        claims: (0..n).map(|i| claim(&format!("c-{i}"))).collect(),
        cluster: Some(ClusterView { leader: Some(100), members: (0..n).map(voter).collect() }),
        next_member: format!("c-{n}"),
        seed: "c-0".into(),
        recover_quorum: false,
        quorum_lost_for: None,
        quorum_loss_grace: Duration::from_secs(120),
        refusal: None,
        blocked: None,
    }
}

fn members(o: &mut Observed) -> &mut Vec<MemberView> {
    &mut o.cluster.as_mut().expect("reachable").members
}

fn waits(a: &Action) -> bool {
    matches!(a, Action::Wait { .. })
}

#[test]
fn a_fresh_cluster_starts_from_one_seed_and_records_that_it_exists() {
    let mut o = Observed {
        target: target(3, "r1"),
        desired: target(3, "r1"),
        seed: "c-0".into(),
        next_member: "c-0".into(),
        ..Default::default()
    };
    assert_eq!(plan(&o), Action::CreateSeed { name: "c-0".into() });
    o.pods.push(pod("c-0"));
    o.claims.push(claim("c-0"));
    assert!(waits(&plan(&o)), "seed starting");
    o.cluster = Some(ClusterView { leader: None, members: vec![voter(0)] });
    assert!(waits(&plan(&o)), "no leader yet");
    o.cluster.as_mut().unwrap().leader = Some(100);
    assert_eq!(plan(&o), Action::MarkBootstrapped);
    // The seed's pod deleted before the cluster was recorded: started again as the seed.
    let mut gone = o.clone();
    gone.pods.clear();
    gone.cluster = None;
    assert_eq!(plan(&gone), Action::CreateSeed { name: "c-0".into() });
}

#[test]
fn growing_adds_one_learner_then_starts_its_pod_then_promotes_it() {
    let mut o = running(1, 3);
    assert_eq!(plan(&o), Action::AddLearner { name: "c-1".into() });
    members(&mut o).push(MemberView { id: 101, pod: Some("c-1".into()), learner: true, ..Default::default() });
    assert_eq!(plan(&o), Action::CreatePod { name: "c-1".into() });
    o.pods.push(PodView { ready: false, ..pod("c-1") });
    o.claims.push(claim("c-1"));
    assert!(waits(&plan(&o)), "learner not ready");
    o.pods[1].ready = true;
    members(&mut o)[1].healthy = true;
    members(&mut o)[1].started = true;
    assert_eq!(plan(&o), Action::Promote { id: 101, name: "c-1".into() });
}

#[test]
fn a_converged_cluster_adopts_an_edited_spec_only_when_idle() {
    let mut o = running(3, 3);
    assert_eq!(plan(&o), Action::Idle);
    o.desired = target(5, "r1");
    assert_eq!(plan(&o), Action::LockTarget(target(5, "r1")));
    // Edited mid-operation (target 5 locked, 4 voters): the locked target is finished first.
    let mut mid = running(4, 5);
    mid.desired = target(3, "r1");
    assert_eq!(plan(&mid), Action::AddLearner { name: "c-4".into() });
}

#[test]
fn scale_down_removes_unhealthy_then_the_newest_follower_never_the_leader() {
    let mut o = running(5, 3);
    assert_eq!(plan(&o), Action::RemoveMember { id: 104, name: "c-4".into(), why: "scale down".into() });
    members(&mut o)[2].healthy = false;
    assert_eq!(plan(&o), Action::RemoveMember { id: 102, name: "c-2".into(), why: "scale down".into() });
    // Two voters, the newest leads: the older follower goes, not the leader.
    let mut o = running(2, 1);
    o.cluster.as_mut().unwrap().leader = Some(101);
    assert_eq!(plan(&o), Action::RemoveMember { id: 100, name: "c-0".into(), why: "scale down".into() });
    let mut o = running(1, 1);
    o.target = target(1, "r1");
    assert_eq!(plan(&o), Action::Idle);
    // Three voters, the leader is the newest: the newest follower goes first, not the leader.
    let mut o = running(3, 2);
    o.cluster.as_mut().unwrap().leader = Some(102);
    assert_eq!(plan(&o), Action::RemoveMember { id: 101, name: "c-1".into(), why: "scale down".into() });
    // Two voters, one down: there is no quorum to commit the removal.
    let mut o = running(2, 1);
    o.cluster.as_mut().unwrap().leader = Some(101);
    members(&mut o)[0].healthy = false;
    assert!(waits(&plan(&o)), "{:?}", plan(&o));
}

#[test]
fn no_step_leaves_the_rest_without_quorum() {
    // 3 voters, one down: removing a healthy one for a scale down would leave 1 of 2.
    let mut o = running(3, 2);
    members(&mut o)[1].healthy = false;
    assert_eq!(plan(&o), Action::RemoveMember { id: 101, name: "c-1".into(), why: "scale down".into() });
    let mut o = running(3, 2);
    members(&mut o)[1].healthy = false;
    members(&mut o)[2].healthy = false;
    assert!(waits(&plan(&o)), "{:?}", plan(&o));
    // A lost claim with the rest not quorate: wait, do not remove.
    let mut o = running(3, 3);
    o.claims.retain(|c| c.name != "c-2");
    members(&mut o)[1].healthy = false;
    assert!(waits(&plan(&o)), "{:?}", plan(&o));
    // Rolling restart waits for every member to be healthy...
    let mut o = running(3, 3);
    o.target.revision = "r2".into();
    o.desired.revision = "r2".into();
    o.pods[2].revision = "r2".into();
    members(&mut o)[2].healthy = false;
    assert!(waits(&plan(&o)), "{:?}", plan(&o));
    // ...except that a member broken on the old template is restarted on
    // the new one first (a bad image fixed in the spec).
    o.pods[2].revision = "r1".into();
    let fix = "restarting an unhealthy member onto the new member template".to_string();
    assert_eq!(plan(&o), Action::DeletePod { name: "c-2".into(), why: fix });
    members(&mut o)[1].healthy = false;
    assert!(waits(&plan(&o)), "two down: no quorum to spare: {:?}", plan(&o));
}

#[test]
fn a_template_edited_mid_operation_is_what_pods_roll_to() {
    // Target {5, r1} locked while scaling; the spec now asks for r2: new
    // pods are made at r2, and the roll goes to r2, never back to r1.
    let mut o = running(5, 5);
    o.desired = target(5, "r2");
    o.pods[4].revision = "r2".into();
    assert_eq!(plan(&o), Action::DeletePod { name: "c-1".into(), why: "rolling onto the new member template".into() });
    // A lone member restarts in place: there is nobody to hand over to.
    let mut one = running(1, 1);
    one.desired = target(1, "r2");
    assert_eq!(
        plan(&one),
        Action::DeletePod { name: "c-0".into(), why: "rolling onto the new member template".into() }
    );
}

#[test]
fn leftovers_of_a_removal_interrupted_by_a_crash_are_cleaned_up() {
    let mut o = running(3, 2);
    members(&mut o).retain(|m| m.id != 102);
    assert_eq!(plan(&o), Action::DeletePod { name: "c-2".into(), why: "not a member of the cluster".into() });
    o.pods.retain(|p| p.name != "c-2");
    assert_eq!(plan(&o), Action::DeleteClaim { name: "c-2".into() });
    o.claims.retain(|c| c.name != "c-2");
    assert_eq!(plan(&o), Action::Idle);
}

#[test]
fn a_lost_pod_comes_back_with_its_identity_and_lost_data_is_replaced() {
    let mut o = running(3, 3);
    o.pods.retain(|p| p.name != "c-1");
    members(&mut o)[1].healthy = false;
    assert_eq!(plan(&o), Action::CreatePod { name: "c-1".into() });
    // Its claim is gone too: the member is removed, then a new one added.
    o.claims.retain(|c| c.name != "c-1");
    let replace =
        Action::RemoveMember { id: 101, name: "c-1".into(), why: "its data is lost or it keeps crashing".into() };
    assert_eq!(plan(&o), replace);
    // Crash-looping (e.g. refused to start on a wiped volume): replaced too.
    let mut o = running(3, 3);
    o.pods[1].crash_looping = true;
    o.pods[1].ready = false;
    members(&mut o)[1].healthy = false;
    assert_eq!(plan(&o), replace);
    // An ephemeral member whose pod is gone has lost its data.
    let mut o = running(3, 3);
    o.ephemeral = true;
    o.pods.retain(|p| p.name != "c-1");
    assert_eq!(plan(&o), replace);
}

#[test]
fn rolling_restart_goes_follower_by_follower_and_the_leader_last() {
    let mut o = running(3, 3);
    o.target.revision = "r2".into();
    o.desired.revision = "r2".into();
    assert_eq!(plan(&o), Action::DeletePod { name: "c-1".into(), why: "rolling onto the new member template".into() });
    o.pods[1].revision = "r2".into();
    o.pods[2].revision = "r2".into();
    members(&mut o)[2].raft_index = 99;
    assert_eq!(plan(&o), Action::MoveLeader { from: "c-0".into(), to: 102, to_name: "c-2".into() });
    o.cluster.as_mut().unwrap().leader = Some(102);
    assert_eq!(plan(&o), Action::DeletePod { name: "c-0".into(), why: "rolling onto the new member template".into() });
    o.pods[0].deleting = true;
    assert!(waits(&plan(&o)));
}

#[test]
fn a_paused_cluster_stops_followers_first_and_restarts_every_member_together() {
    let mut o = running(3, 3);
    o.target = target(0, "r1");
    o.desired = target(0, "r1");
    assert_eq!(plan(&o), Action::DeletePod { name: "c-1".into(), why: "the cluster is paused".into() });
    o.pods.retain(|p| p.name == "c-0");
    assert_eq!(plan(&o), Action::DeletePod { name: "c-0".into(), why: "the cluster is paused".into() });
    o.pods.clear();
    o.cluster = None;
    assert_eq!(plan(&o), Action::Idle);
    o.desired = target(3, "r1");
    assert_eq!(plan(&o), Action::LockTarget(target(3, "r1")));
    o.target = target(3, "r1");
    assert_eq!(plan(&o), Action::CreatePod { name: "c-0".into() });
    o.pods.push(pod("c-0"));
    assert_eq!(plan(&o), Action::CreatePod { name: "c-1".into() });
}

#[test]
fn a_refused_spec_changes_nothing_but_members_are_still_healed() {
    let mut o = running(3, 3);
    o.desired = target(5, "r1");
    o.refusal = Some("storage.size cannot change".into());
    assert_eq!(plan(&o), Action::Refuse { reason: "storage.size cannot change".into() });
    o.pods.retain(|p| p.name != "c-1");
    assert_eq!(plan(&o), Action::CreatePod { name: "c-1".into() });
}

#[test]
fn a_spec_no_pod_can_be_made_from_blocks_everything_even_healing_and_bootstrap() {
    let mut o = running(3, 3);
    o.pods.retain(|p| p.name != "c-1");
    o.blocked = Some("tls cannot be changed".into());
    assert_eq!(plan(&o), Action::Refuse { reason: "tls cannot be changed".into() });
    // A new cluster whose Secret is missing: no seed either.
    let mut fresh = running(0, 1);
    fresh.cluster = None;
    fresh.bootstrapped = false;
    fresh.blocked = Some("tls.client names Secret x, which does not exist".into());
    assert!(matches!(plan(&fresh), Action::Refuse { .. }));
    fresh.blocked = None;
    assert_eq!(plan(&fresh), Action::CreateSeed { name: "c-0".into() });
}

#[test]
fn a_lost_quorum_is_recovered_from_the_most_advanced_member_only_when_asked_and_after_the_grace() {
    let mut o = running(3, 3);
    for m in members(&mut o).iter_mut() {
        m.healthy = false;
    }
    members(&mut o)[1].answered = false;
    members(&mut o)[2].answered = false;
    members(&mut o)[0].raft_index = 70;
    o.cluster.as_mut().unwrap().leader = None;
    let reason = |a: Action| match a {
        Action::Wait { reason } => reason,
        other => panic!("expected to wait, got {other:?}"),
    };
    assert!(reason(plan(&o)).contains("set spec.quorumLossRecovery"));
    o.recover_quorum = true;
    o.quorum_lost_for = Some(Duration::from_secs(30));
    assert!(reason(plan(&o)).contains("recovering if it lasts"));
    o.quorum_lost_for = Some(Duration::from_secs(121));
    assert_eq!(plan(&o), Action::ForceNewCluster { name: "c-0".into() });
    // Of the members that answer, the most advanced.
    members(&mut o)[2].answered = true;
    members(&mut o)[2].raft_index = 90;
    assert_eq!(plan(&o), Action::ForceNewCluster { name: "c-2".into() });
    // A missing pod is started first: it may be what the quorum lacks.
    o.pods.retain(|p| p.name != "c-1");
    assert_eq!(plan(&o), Action::CreatePod { name: "c-1".into() });
    // Recovered (c-2 alone, forced): the other pods go, then c-2 restarts without the flag.
    let mut r = running(3, 3);
    r.cluster = Some(ClusterView { leader: Some(102), members: vec![voter(2)] });
    r.pods[2].forced = true;
    assert_eq!(plan(&r), Action::DeletePod { name: "c-0".into(), why: "not a member of the cluster".into() });
    r.pods.retain(|p| p.name == "c-2");
    r.claims.retain(|c| c.name == "c-2");
    assert_eq!(
        plan(&r),
        Action::DeletePod { name: "c-2".into(), why: "restarting without --force-new-cluster".into() }
    );
    r.pods[0].forced = false;
    assert_eq!(plan(&r), Action::AddLearner { name: "c-3".into() });
}

#[test]
fn everything_gone_after_the_cluster_existed_is_reported_not_recreated() {
    let mut o = running(3, 3);
    o.pods.clear();
    o.claims.clear();
    o.cluster = None;
    assert!(waits(&plan(&o)));
}

/// A model cluster: the planner's actions applied to it, as the operator's
/// actor and the cluster would apply them.
struct Model {
    o: Observed,
    next_id: u64,
    /// The operator dies between the two writes of every pod start (the
    /// claim made, the pod not yet), once per pod.
    interrupt: bool,
    interrupted: std::collections::HashSet<String>,
}

impl Model {
    fn new() -> Model {
        let o = Observed {
            target: target(1, "r1"),
            desired: target(1, "r1"),
            seed: "c-0".into(),
            next_member: "c-0".into(),
            ..Default::default()
        };
        Model { o, next_id: 100, interrupt: false, interrupted: Default::default() }
    }

    fn apply(&mut self, a: &Action) {
        if let Action::CreateSeed { name } | Action::CreatePod { name } = a {
            if self.interrupt && self.interrupted.insert(name.clone()) {
                if !self.o.claims.iter().any(|c| &c.name == name) {
                    self.o.claims.push(claim(name));
                }
                return;
            }
        }
        let o = &mut self.o;
        match a {
            Action::CreateSeed { name } => {
                o.pods.push(pod(name));
                if !o.claims.iter().any(|c| &c.name == name) {
                    o.claims.push(claim(name));
                }
                o.cluster = Some(ClusterView {
                    leader: Some(self.next_id),
                    members: vec![MemberView {
                        id: self.next_id,
                        pod: Some(name.clone()),
                        started: true,
                        healthy: true,
                        ..Default::default()
                    }],
                });
                self.next_id += 1;
            }
            Action::MarkBootstrapped => o.bootstrapped = true,
            Action::AddLearner { name } => {
                members(o).push(MemberView {
                    id: self.next_id,
                    pod: Some(name.clone()),
                    learner: true,
                    ..Default::default()
                });
                self.next_id += 1;
            }
            Action::CreatePod { name } => {
                o.pods.push(PodView { revision: o.desired.revision.clone(), ..pod(name) });
                if !o.claims.iter().any(|c| &c.name == name) {
                    o.claims.push(claim(name));
                }
                let m = members(o).iter_mut().find(|m| m.pod.as_deref() == Some(name)).expect("member");
                (m.started, m.healthy) = (true, true);
            }
            Action::Promote { id, .. } => members(o).iter_mut().filter(|m| m.id == *id).for_each(|m| m.learner = false),
            Action::MoveLeader { to, .. } => o.cluster.as_mut().unwrap().leader = Some(*to),
            Action::RemoveMember { id, .. } => members(o).retain(|m| m.id != *id),
            Action::DeletePod { name, .. } => o.pods.retain(|p| &p.name != name),
            Action::DeleteClaim { name } => o.claims.retain(|c| &c.name != name),
            Action::LockTarget(t) => o.target = t.clone(),
            Action::Wait { reason } | Action::Refuse { reason } => panic!("a healthy model never waits: {reason}"),
            Action::ForceNewCluster { name } => panic!("a healthy model never loses quorum: {name}"),
            Action::Idle => {}
        }
        // The next free name, as the observer computes it.
        let max = o
            .pods
            .iter()
            .map(|p| &p.name)
            .chain(o.cluster.iter().flat_map(|c| &c.members).filter_map(|m| m.pod.as_ref()))
            .filter_map(|n| n[2..].parse::<u32>().ok())
            .max();
        o.next_member = format!("c-{}", max.map_or(0, |m| m + 1));
        // Safety after every step.
        let c = o.cluster.as_ref().unwrap();
        assert!(c.members.iter().filter(|m| m.learner).count() <= 1, "two learners after {a:?}");
        let voters = c.members.iter().filter(|m| !m.learner).count();
        assert!(
            voters >= 1 && c.members.iter().filter(|m| !m.learner && m.healthy).count() > voters / 2,
            "quorum lost after {a:?}"
        );
        assert!(c.members.iter().any(|m| Some(m.id) == c.leader && !m.learner), "no leader after {a:?}");
    }

    /// Runs the planner until the cluster is idle; returns the steps.
    fn converge(&mut self) -> Vec<Action> {
        let mut steps = Vec::new();
        loop {
            let a = plan(&self.o);
            if a == Action::Idle {
                return steps;
            }
            self.apply(&a);
            steps.push(a);
            assert!(steps.len() < 100, "no convergence: {steps:?}");
        }
    }

    fn voters(&self) -> usize {
        self.o.cluster.as_ref().map_or(0, |c| c.members.iter().filter(|m| !m.learner).count())
    }
}

#[test]
fn the_planner_alone_scales_one_three_five_three_one_safely() {
    let mut m = Model::new();
    m.converge();
    assert_eq!(m.voters(), 1);
    for n in [3, 5, 3, 1] {
        m.o.desired = target(n, "r1");
        let steps = m.converge();
        assert_eq!(m.voters(), n as usize, "{steps:?}");
        assert_eq!(m.o.pods.len(), n as usize);
        assert_eq!(m.o.claims.len(), n as usize, "removed members' claims are deleted: {steps:?}");
        if n == 5 {
            // Each new member: added as learner, pod created, promoted.
            assert_eq!(steps.iter().filter(|s| matches!(s, Action::AddLearner { .. })).count(), 2);
            assert_eq!(steps.iter().filter(|s| matches!(s, Action::Promote { .. })).count(), 2);
        }
    }
    // A new template rolls every pod, the leader last after handing over.
    m.o.desired = target(3, "r2");
    m.converge();
    m.o.desired = target(3, "r3");
    let steps = m.converge();
    let last_delete = steps.iter().rposition(|s| matches!(s, Action::DeletePod { .. })).unwrap();
    assert!(matches!(steps[last_delete - 1], Action::MoveLeader { .. }), "{steps:?}");
    assert!(m.o.pods.iter().all(|p| p.revision == "r3"), "{steps:?}");
}

#[test]
fn the_planner_resumes_after_interrupted_steps_and_finishes_a_locked_target_first() {
    let mut m = Model::new();
    m.interrupt = true;
    m.converge();
    for n in [3, 5, 3] {
        m.o.desired = target(n, "r1");
        let steps = m.converge();
        assert_eq!(m.voters(), n as usize, "{steps:?}");
        assert_eq!((m.o.pods.len(), m.o.claims.len()), (n as usize, n as usize), "{steps:?}");
    }
    assert!(m.interrupted.len() >= 5, "pod starts interrupted: {:?}", m.interrupted);
    // Edited mid-operation: 3 → 5 started, then the spec says 3 again. The
    // locked target (5) is reached first, then the new one.
    m.o.desired = target(5, "r1");
    let mut steps = Vec::new();
    for _ in 0..3 {
        let a = plan(&m.o);
        m.apply(&a);
        steps.push(a);
    }
    m.o.desired = target(3, "r1");
    steps.extend(m.converge());
    let promoted = steps.iter().filter(|s| matches!(s, Action::Promote { .. })).count();
    assert_eq!(promoted, 2, "the locked target of 5 was not finished first: {steps:?}");
    assert_eq!(m.voters(), 3, "{steps:?}");
}
