//! The cluster's own view and the membership calls, through etcd's v3 API
//! (the etcd-client crate). Members are reached at their pods' IPs, which
//! work from inside the cluster and from a node alike.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, MemberAddOptions};
use thiserror::Error;

use crate::names::{Names, CLIENT_PORT};
use crate::plan::{ClusterView, MemberView};

/// How long one call to one member may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a leadership hand-over may take (a few election timeouts).
const MOVE_LEADER_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum MembershipError {
    #[error("no member answers")]
    Unreachable,
    #[error("{0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0} took longer than {1:?}")]
    Timeout(&'static str, Duration),
}

impl MembershipError {
    /// A refusal that passes with time (a learner catching up, a leader
    /// election under way): retried soon, not reported as a failure.
    pub fn is_transient(&self) -> bool {
        let text = self.to_string();
        ["in sync with leader", "no leader", "leader changed", "not enough started members", "unhealthy cluster"]
            .iter()
            .any(|t| text.contains(t))
    }
}

/// What one member says about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberState {
    pub id: u64,
    /// The pod IP it answered at.
    pub ip: String,
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub version: String,
    pub db_size: i64,
}

/// A member as the member list has it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListedMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

/// The cluster as seen through the members that answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    pub cluster_id: u64,
    pub members: Vec<ListedMember>,
    pub states: Vec<MemberState>,
    /// How they were reached, for the calls that follow.
    pub access: Access,
}

/// How the operator reaches members: plain, or over TLS with its own
/// client certificate.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub tls: Option<etcd_client::TlsOptions>,
}

/// Accesses compare by whether they use TLS (the options hold no
/// comparable certificates).
impl PartialEq for Access {
    fn eq(&self, other: &Access) -> bool {
        self.tls.is_some() == other.tls.is_some()
    }
}

impl Access {
    fn endpoint(&self, ip: &str) -> String {
        crate::names::url(self.tls.is_some(), ip, CLIENT_PORT)
    }

    /// A client of the member at `ip` whose requests may each take `limit`.
    async fn connect(&self, ip: &str, limit: Duration) -> Result<Client, MembershipError> {
        let mut options = ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT).with_timeout(limit);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        timed("connect", Client::connect([self.endpoint(ip)], Some(options))).await
    }
}

impl ListedMember {
    /// Its Pod's name, from its peer URL; None for a member that is not one
    /// of this cluster's pods.
    pub fn pod(&self, names: &Names) -> Option<String> {
        self.peer_urls.iter().find_map(|u| names.member_of_peer_url(u))
    }
}

async fn timed<T>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, MembershipError> {
    within(CALL_TIMEOUT, what, call).await
}

async fn within<T>(
    limit: Duration,
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, MembershipError> {
    tokio::time::timeout(limit, call).await.map_err(|_| MembershipError::Timeout(what, limit))?.map_err(Into::into)
}

impl Membership {
    /// Asks every pod IP for its status, and the member list of the leader
    /// (or of any member that answered). Unreachable when none answers.
    pub async fn observe(pod_ips: &[String], access: &Access) -> Result<Membership, MembershipError> {
        let asks = pod_ips.iter().map(|ip| async move {
            let mut c = access.connect(ip, CALL_TIMEOUT).await?;
            let s = timed("status", c.status()).await?;
            let id = s.header().map(|h| h.member_id()).unwrap_or_default();
            let state = MemberState {
                id,
                ip: ip.clone(),
                leader: s.leader(),
                raft_term: s.raft_term(),
                raft_index: s.raft_index(),
                version: s.version().to_string(),
                db_size: s.db_size(),
            };
            Ok::<_, MembershipError>((state, c))
        });
        let answers: Vec<_> = futures::future::join_all(asks).await.into_iter().filter_map(Result::ok).collect();
        let mut out = Membership { access: access.clone(), ..Membership::default() };
        // The leader's list is the freshest; any member's will do otherwise.
        let mut order: Vec<usize> = (0..answers.len()).collect();
        order.sort_by_key(|&i| answers[i].0.leader != answers[i].0.id);
        for &i in &order {
            let mut c = answers[i].1.clone();
            if let Ok(list) = timed("member list", c.member_list()).await {
                out.cluster_id = list.header().map(|h| h.cluster_id()).unwrap_or_default();
                out.members = list
                    .members()
                    .iter()
                    .map(|m| ListedMember {
                        id: m.id(),
                        name: m.name().to_string(),
                        peer_urls: m.peer_urls().to_vec(),
                        client_urls: m.client_urls().to_vec(),
                        learner: m.is_learner(),
                    })
                    .collect();
                break;
            }
        }
        if out.members.is_empty() {
            return Err(MembershipError::Unreachable);
        }
        out.states = answers.into_iter().map(|(state, _)| state).collect();
        Ok(out)
    }

    /// The leader's ID, as the members that answered see it, if it is a
    /// member.
    pub fn leader(&self) -> Option<u64> {
        // Members that disagree (one cut off, still believing in an old
        // leader) are settled by the newest term.
        let newest = self.states.iter().filter(|s| s.leader != 0).max_by_key(|s| s.raft_term)?;
        self.members.iter().any(|m| m.id == newest.leader).then_some(newest.leader)
    }

    /// The oldest server version among the members that answered.
    pub fn oldest_version(&self) -> Option<String> {
        let numbers = |v: &str| v.split(['.', '-', '+']).map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
        self.states.iter().map(|s| s.version.clone()).min_by_key(|v| numbers(v))
    }

    pub fn state(&self, id: u64) -> Option<&MemberState> {
        self.states.iter().find(|s| s.id == id)
    }

    /// A member is healthy when it answered and knows a leader.
    pub fn healthy(&self, id: u64) -> bool {
        self.state(id).is_some_and(|s| s.leader != 0)
    }

    /// The planner's view.
    pub fn view(&self, names: &Names) -> ClusterView {
        let members = self
            .members
            .iter()
            .map(|m| MemberView {
                id: m.id,
                pod: m.pod(names),
                learner: m.learner,
                started: !m.name.is_empty(),
                answered: self.state(m.id).is_some(),
                healthy: self.healthy(m.id),
                raft_index: self.state(m.id).map_or(0, |s| s.raft_index),
            })
            .collect();
        ClusterView { leader: self.leader(), members }
    }

    /// A client to the leader (or to any member that answered), whose
    /// requests may each take `limit`.
    async fn client(&self, leader_only: bool, limit: Duration) -> Result<Client, MembershipError> {
        let leader = self.leader();
        let mut states: Vec<&MemberState> = self.states.iter().collect();
        states.sort_by_key(|s| Some(s.id) != leader);
        if leader_only {
            states.retain(|s| Some(s.id) == leader);
        }
        for s in states {
            if let Ok(c) = self.access.connect(&s.ip, limit).await {
                return Ok(c);
            }
        }
        Err(MembershipError::Unreachable)
    }

    /// `member add --learner`; returns the new member's ID.
    pub async fn add_learner(&self, peer_url: &str) -> Result<u64, MembershipError> {
        let mut c = self.client(false, CALL_TIMEOUT).await?;
        let r = timed("member add", c.member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))).await?;
        Ok(r.member().map(|m| m.id()).unwrap_or_default())
    }

    pub async fn promote(&self, id: u64) -> Result<(), MembershipError> {
        let mut c = self.client(false, CALL_TIMEOUT).await?;
        timed("member promote", c.member_promote(id)).await.map(drop)
    }

    pub async fn remove(&self, id: u64) -> Result<(), MembershipError> {
        let mut c = self.client(false, CALL_TIMEOUT).await?;
        timed("member remove", c.member_remove(id)).await.map(drop)
    }

    /// MoveLeader, sent to the leader (only it can hand over); it answers
    /// once the target leads, which takes an election.
    pub async fn move_leader(&self, to: u64) -> Result<(), MembershipError> {
        let mut c = self.client(true, MOVE_LEADER_TIMEOUT).await?;
        within(MOVE_LEADER_TIMEOUT, "move leader", c.move_leader(to)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: u64, leader: u64, raft_term: u64, version: &str) -> MemberState {
        MemberState { id, leader, raft_term, version: version.into(), ..Default::default() }
    }

    #[test]
    fn the_newest_term_names_the_leader_and_versions_compare_as_numbers() {
        let members = [1, 2, 3].map(|id| ListedMember { id, ..Default::default() }).to_vec();
        let m = Membership {
            members,
            // Member 3 was cut off and still believes in 1, from term 4.
            states: vec![state(1, 2, 5, "3.10.0"), state(2, 2, 5, "3.9.1"), state(3, 1, 4, "3.10.0")],
            ..Default::default()
        };
        assert_eq!(m.leader(), Some(2));
        assert_eq!(m.oldest_version().as_deref(), Some("3.9.1"));
        let strangers = Membership { states: vec![state(1, 9, 5, "3.5.0")], ..m.clone() };
        assert_eq!(strangers.leader(), None, "a leader that is not a member");
    }
}
