//! Membership changes as etcd makes them (`server.AddMember`,
//! `RemoveMember`, `PromoteMember`, `UpdateMember`): checked by the leader
//! against raft's view of every member's log, with etcd's rules and errors,
//! then proposed as a conf change and answered once it is applied. A member
//! that is not the leader hands the request to the leader over the peer
//! transport.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use sha1::{Digest, Sha1};
use tonic::Status;

use crate::apply::ApplyResponse;
use crate::error::EtcdError;
use crate::membership::{to_member, Members};
use crate::proto::etcdserverpb::*;
use crate::proto::ferrocdpb::internal_request::Request as Internal;
use crate::proto::ferrocdpb::{ConfChangeContext, MemberAttributes, MemberRecord};
use crate::raftnode::MemberChange;
use crate::server::EtcdServer;

/// etcd's `readyPercentThreshold`: a learner is promoted only once its log
/// matches at least this share of the leader's.
const LEARNER_READY: f64 = 0.9;

/// A member added with no name yet (it publishes one when it starts).
fn new_member_id(peer_urls: &[String]) -> u64 {
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let digest = Sha1::digest(format!("{}{now}", sorted.concat()).as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

/// Peer URLs must be absolute http(s) URLs with a host and port.
fn check_urls(urls: &[String]) -> Result<(), EtcdError> {
    if urls.is_empty() {
        return Err(EtcdError::MemberBadUrls);
    }
    for u in urls {
        let parsed = url::Url::parse(u).map_err(|_| EtcdError::MemberBadUrls)?;
        let plain = parsed.path().is_empty() || parsed.path() == "/";
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host_str().is_none()
            || parsed.port().is_none()
            || !plain
        {
            return Err(EtcdError::MemberBadUrls);
        }
    }
    Ok(())
}

/// Voters that have started (they published their name), and all voters,
/// with `learner` counted as a voter when given (etcd's
/// `IsReadyTo{Add,Promote}Member`): those started must make a quorum of the
/// voters after the change, except when a one-member cluster gets its
/// second member.
fn ready_to_grow(members: &Members, learner: Option<&MemberRecord>) -> bool {
    let voters: Vec<&MemberRecord> = members.members.values().filter(|m| !m.is_learner).collect();
    let mut started = voters.iter().filter(|m| !m.name.is_empty()).count();
    let after = voters.len() + 1;
    if learner.is_some_and(|l| !l.name.is_empty()) {
        started += 1;
    }
    (started == 1 && after == 2) || started >= quorum(after)
}

/// etcd's `IsReadyToRemoveVotingMember`: the started voters left make a
/// quorum of the voters left.
fn ready_to_remove(members: &Members, id: u64) -> bool {
    let left: Vec<&MemberRecord> = members.members.values().filter(|m| !m.is_learner && m.id != id).collect();
    let started = left.iter().filter(|m| !m.name.is_empty()).count();
    started >= quorum(left.len())
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// etcd's `HealthInterval`: a peer counts as connected once its link has
/// been up this long.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

impl EtcdServer {
    /// Voters (this member included) whose link has been up for at least
    /// `HEALTH_INTERVAL` (etcd's `numConnectedSince`).
    fn connected_voters(&self, voters: &[u64]) -> usize {
        let since = Instant::now().checked_sub(HEALTH_INTERVAL);
        voters
            .iter()
            .filter(|id| {
                **id == self.member.id
                    || self.transport.active_since(**id).is_some_and(|t| since.is_some_and(|s| t <= s))
            })
            .count()
    }

    /// Proposes a conf change and waits until it is applied.
    async fn change_members(
        &self,
        change: MemberChange,
        node_id: u64,
        member: Option<MemberRecord>,
    ) -> Result<Vec<Member>, EtcdError> {
        let applied = self
            .await_proposal(|id| {
                let context = ConfChangeContext { proposal_id: id, member }.encode_to_vec();
                self.node.propose_conf_change(id, change, node_id, context)
            })
            .await?;
        match applied {
            ApplyResponse::Members(members) => Ok(members),
            _ => Err(EtcdError::Internal("a conf change answered with something else".into())),
        }
    }

    pub async fn member_add(&self, req: MemberAddRequest) -> Result<MemberAddResponse, Status> {
        check_urls(&req.peer_ur_ls)?;
        if !self.is_leader() {
            return self
                .transport
                .to_leader(self.node.status().leader())?
                .member_add(req)
                .await
                .map(|r| r.into_inner());
        }
        let members = self.membership.current();
        if members.members.values().any(|m| m.peer_urls.iter().any(|u| req.peer_ur_ls.contains(u))) {
            return Err(EtcdError::PeerUrlExist.into());
        }
        if req.is_learner && members.voters().learners.len() >= self.limits.max_learners {
            return Err(EtcdError::TooManyLearners.into());
        }
        if self.limits.strict_reconfig_check {
            if !req.is_learner && !ready_to_grow(&members, None) {
                return Err(EtcdError::MemberNotEnoughStarted.into());
            }
            // A change made while a voter is cut off could break the quorum
            // that is still up (etcd's `isConnectedFullySince`).
            let voters = members.voters().voters;
            if self.connected_voters(&voters) < voters.len() {
                return Err(EtcdError::Unhealthy.into());
            }
        }
        let id = new_member_id(&req.peer_ur_ls);
        if members.members.contains_key(&id) || members.removed.contains(&id) {
            return Err(EtcdError::MemberExist.into());
        }
        let record = MemberRecord {
            id,
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        let change = if req.is_learner { MemberChange::AddLearner } else { MemberChange::AddVoter };
        let list = self.change_members(change, id, Some(record.clone())).await?;
        tracing::info!(member = format!("{id:x}"), urls = ?req.peer_ur_ls, learner = req.is_learner, "added member");
        Ok(MemberAddResponse { header: Some(self.header(0)), member: Some(to_member(&record)), members: list })
    }

    pub async fn member_remove(&self, req: MemberRemoveRequest) -> Result<MemberRemoveResponse, Status> {
        if !self.is_leader() {
            return self
                .transport
                .to_leader(self.node.status().leader())?
                .member_remove(req)
                .await
                .map(|r| r.into_inner());
        }
        let members = self.membership.current();
        let Some(target) = members.get(req.id).cloned() else {
            return Err(EtcdError::MemberNotFound.into());
        };
        if self.limits.strict_reconfig_check && !target.is_learner {
            if !ready_to_remove(&members, req.id) {
                return Err(EtcdError::MemberNotEnoughStarted.into());
            }
            // A member that is down can go; otherwise the voters connected
            // now, less the one removed, must make a quorum (etcd's rule).
            let down = req.id != self.member.id && self.transport.active_since(req.id).is_none();
            let voters = members.voters().voters;
            if !down && self.connected_voters(&voters).saturating_sub(1) < quorum(voters.len() - 1) {
                return Err(EtcdError::Unhealthy.into());
            }
        }
        let list = self.change_members(MemberChange::Remove, req.id, None).await?;
        tracing::info!(member = format!("{:x}", req.id), "removed member");
        Ok(MemberRemoveResponse { header: Some(self.header(0)), members: list })
    }

    pub async fn member_promote(&self, req: MemberPromoteRequest) -> Result<MemberPromoteResponse, Status> {
        if !self.is_leader() {
            return self
                .transport
                .to_leader(self.node.status().leader())?
                .member_promote(req)
                .await
                .map(|r| r.into_inner());
        }
        let members = self.membership.current();
        let Some(target) = members.get(req.id).cloned() else {
            return Err(EtcdError::MemberNotFound.into());
        };
        if !target.is_learner {
            return Err(EtcdError::MemberNotLearner.into());
        }
        let progress = self.node.progress().await?.ok_or(EtcdError::NotLeader)?;
        let leader_match = progress.iter().find(|p| p.id == self.member.id).map_or(0, |p| p.matched);
        let learner_match = progress.iter().find(|p| p.id == req.id).map_or(0, |p| p.matched);
        if (learner_match as f64) < (leader_match as f64) * LEARNER_READY {
            return Err(EtcdError::LearnerNotReady.into());
        }
        if self.limits.strict_reconfig_check && !ready_to_grow(&members, Some(&target)) {
            return Err(EtcdError::MemberNotEnoughStarted.into());
        }
        let list = self.change_members(MemberChange::AddVoter, req.id, Some(target)).await?;
        tracing::info!(member = format!("{:x}", req.id), "promoted learner");
        Ok(MemberPromoteResponse { header: Some(self.header(0)), members: list })
    }

    pub async fn member_update(&self, req: MemberUpdateRequest) -> Result<MemberUpdateResponse, Status> {
        check_urls(&req.peer_ur_ls)?;
        let members = self.membership.current();
        if !members.members.contains_key(&req.id) {
            return Err(EtcdError::MemberNotFound.into());
        }
        if members.members.values().any(|m| m.id != req.id && m.peer_urls.iter().any(|u| req.peer_ur_ls.contains(u))) {
            return Err(EtcdError::PeerUrlExist.into());
        }
        let update = MemberAttributes { id: req.id, peer_urls: req.peer_ur_ls.clone(), ..Default::default() };
        let members = match self.propose(Internal::MemberAttributes(update)).await? {
            ApplyResponse::Members(m) => m,
            _ => return Err(EtcdError::Internal("a member update answered with something else".into()).into()),
        };
        Ok(MemberUpdateResponse { header: Some(self.header(0)), members })
    }

    /// Publishes this member's name and client URLs through raft once it
    /// runs (etcd's `publishV3`), retrying until it is applied.
    pub async fn publish_attributes(&self) {
        let attrs = MemberAttributes {
            id: self.member.id,
            name: self.member.name.clone(),
            client_urls: self.member.client_urls.clone(),
            peer_urls: Vec::new(),
        };
        loop {
            let current = self.membership.current();
            if let Some(m) = current.get(self.member.id) {
                if m.name == attrs.name && m.client_urls == attrs.client_urls {
                    return;
                }
            }
            match self.propose(Internal::MemberAttributes(attrs.clone())).await {
                Ok(_) => {
                    tracing::info!(name = %attrs.name, client_urls = ?attrs.client_urls, "published member attributes");
                    return;
                }
                Err(EtcdError::Stopped) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "publishing member attributes failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_must_be_http_with_host_and_port() {
        assert!(check_urls(&["http://10.0.0.1:2380".into()]).is_ok());
        assert!(check_urls(&["https://host:2380".into()]).is_ok());
        for bad in ["", "10.0.0.1:2380", "http://10.0.0.1", "unix://x:1", "http://h:1/path", "http://:2380"] {
            assert_eq!(check_urls(&[bad.into()]), Err(EtcdError::MemberBadUrls), "{bad:?}");
        }
        assert_eq!(check_urls(&[]), Err(EtcdError::MemberBadUrls));
    }

    #[test]
    fn quorum_needs_a_majority() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
    }

    #[test]
    fn growing_and_shrinking_need_started_members_as_etcd() {
        let m =
            |id, name: &str, learner| MemberRecord { id, name: name.into(), is_learner: learner, ..Default::default() };
        let of = |list: Vec<MemberRecord>| Members {
            members: list.into_iter().map(|r| (r.id, r)).collect(),
            ..Default::default()
        };
        // One member gets a second even though it has not started.
        assert!(ready_to_grow(&of(vec![m(1, "a", false)]), None));
        // Three voters, one not started: a fourth would need three started.
        let three = of(vec![m(1, "a", false), m(2, "b", false), m(3, "", false)]);
        assert!(!ready_to_grow(&three, None));
        assert!(ready_to_grow(&three, Some(&m(4, "d", true))));
        assert!(!ready_to_grow(&three, Some(&m(4, "", true))));
        // Removing a started voter leaves one started of two: no quorum.
        assert!(!ready_to_remove(&three, 1));
        assert!(ready_to_remove(&three, 3));
    }
}
