//! The cluster's members (etcd's `membership.RaftCluster`): who they are,
//! their names and URLs, which are learners, and which IDs were removed.
//! Changed only on the apply path (conf changes and attribute updates), and
//! stored in the same backend batch as the applied index, so that a restart
//! neither replays nor loses a change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use prost::Message;
use tokio::sync::watch;

use crate::error::EtcdError;
use crate::mvcc::{MvccError, Store, WriteBatch};
use crate::proto::etcdserverpb::Member;
use crate::proto::ferrocdpb::{ConfChangeContext, MemberAttributes, MemberRecord, Membership as MembershipRecord};
use crate::raftnode::{ConfChangeEntry, MemberChange, Voters};

const META_MEMBERSHIP: &str = "membership";

/// One state of the membership.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Members {
    pub members: BTreeMap<u64, MemberRecord>,
    pub removed: BTreeSet<u64>,
}

impl Members {
    pub fn from_record(r: MembershipRecord) -> Members {
        Members {
            members: r.members.into_iter().map(|m| (m.id, m)).collect(),
            removed: r.removed.into_iter().collect(),
        }
    }

    pub fn to_record(&self) -> MembershipRecord {
        MembershipRecord {
            members: self.members.values().cloned().collect(),
            removed: self.removed.iter().copied().collect(),
        }
    }

    pub fn get(&self, id: u64) -> Option<&MemberRecord> {
        self.members.get(&id)
    }

    pub fn voters(&self) -> Voters {
        let (learners, voters): (Vec<&MemberRecord>, Vec<&MemberRecord>) =
            self.members.values().partition(|m| m.is_learner);
        Voters { voters: voters.iter().map(|m| m.id).collect(), learners: learners.iter().map(|m| m.id).collect() }
    }

    /// The members as the Cluster service lists them.
    pub fn list(&self) -> Vec<Member> {
        self.members.values().map(to_member).collect()
    }

    /// The member whose peer URLs are exactly `sorted` (in any order).
    pub fn with_peer_urls(&self, sorted: &[String]) -> Option<&MemberRecord> {
        self.members.values().find(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls == sorted
        })
    }
}

pub fn to_member(m: &MemberRecord) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

pub struct Membership {
    /// The current membership; watchers are told of every change.
    current: watch::Sender<Arc<Members>>,
    /// This member's ID, once known, and whether the membership makes it a
    /// learner (checked on every client request).
    local: OnceLock<u64>,
    local_learner: AtomicBool,
}

impl Membership {
    /// The membership the backend holds (empty for a new member).
    pub fn load(store: &Store) -> Result<Membership, MvccError> {
        let members = match store.meta(META_MEMBERSHIP)? {
            Some(bytes) => Members::from_record(
                MembershipRecord::decode(bytes.as_slice()).map_err(|e| MvccError::Corrupt(e.to_string()))?,
            ),
            None => Members::default(),
        };
        Ok(Membership {
            current: watch::Sender::new(Arc::new(members)),
            local: OnceLock::new(),
            local_learner: AtomicBool::new(false),
        })
    }

    /// Names this member, whose learner status `local_is_learner` follows.
    pub fn set_local(&self, id: u64) {
        let _ = self.local.set(id);
        self.set((*self.current()).clone());
    }

    /// Whether this member is a learner now.
    pub fn local_is_learner(&self) -> bool {
        self.local_learner.load(Ordering::Acquire)
    }

    /// Takes the membership the store holds now (after a snapshot install).
    pub fn reload(&self, store: &Store) -> Result<(), MvccError> {
        let loaded = Membership::load(store)?;
        self.set((*loaded.current()).clone());
        Ok(())
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.current.borrow().removed.contains(&id)
    }

    pub fn current(&self) -> Arc<Members> {
        self.current.borrow().clone()
    }

    /// Told of every change (the transport follows peer URLs this way).
    pub fn watch(&self) -> watch::Receiver<Arc<Members>> {
        self.current.subscribe()
    }

    /// Writes a membership learned outside the log (a data dir made before
    /// membership was stored, or a member joining an existing cluster).
    pub fn seed(&self, store: &Store, members: Members) -> Result<(), MvccError> {
        store.put_meta_durable(META_MEMBERSHIP, &members.to_record().encode_to_vec())?;
        self.set(members);
        Ok(())
    }

    fn set(&self, members: Members) {
        let learner = self.local.get().is_some_and(|id| members.get(*id).is_some_and(|m| m.is_learner));
        self.local_learner.store(learner, Ordering::Release);
        self.current.send_replace(Arc::new(members));
    }

    fn update(&self, batch: &mut WriteBatch<'_>, f: impl FnOnce(&mut Members)) {
        let mut next = (*self.current()).clone();
        f(&mut next);
        batch.set_meta(META_MEMBERSHIP, &next.to_record().encode_to_vec());
        self.set(next);
    }

    /// Applies a committed conf change in `batch`; returns the proposal
    /// waiting for it and the members afterwards. A change raft refused
    /// changes nothing and fails its proposal.
    pub fn apply_conf_change(
        &self,
        batch: &mut WriteBatch<'_>,
        cc: &ConfChangeEntry<'_>,
    ) -> (u64, Result<Vec<Member>, EtcdError>) {
        let ctx = match ConfChangeContext::decode(cc.context) {
            Ok(ctx) => ctx,
            Err(e) => return (0, Err(EtcdError::Internal(format!("undecodable conf change context: {e}")))),
        };
        if !cc.accepted {
            return (ctx.proposal_id, Err(EtcdError::Unhealthy));
        }
        self.update(batch, |m| match cc.change {
            MemberChange::AddVoter | MemberChange::AddLearner => {
                let learner = cc.change == MemberChange::AddLearner;
                match m.members.get_mut(&cc.node_id) {
                    // Promotion: the member keeps its name and URLs.
                    Some(existing) => existing.is_learner = learner,
                    None => {
                        let mut record = ctx.member.clone().unwrap_or_default();
                        record.id = cc.node_id;
                        record.is_learner = learner;
                        m.members.insert(cc.node_id, record);
                    }
                }
            }
            MemberChange::Remove => {
                m.members.remove(&cc.node_id);
                m.removed.insert(cc.node_id);
            }
        });
        (ctx.proposal_id, Ok(self.current().list()))
    }

    /// A member's name and client URLs (published when it starts), or its
    /// peer URLs (MemberUpdate). Unknown members are ignored, as etcd does
    /// for a member removed meanwhile.
    pub fn apply_attributes(&self, batch: &mut WriteBatch<'_>, a: &MemberAttributes) -> Result<Vec<Member>, EtcdError> {
        if !self.current().members.contains_key(&a.id) {
            return Err(EtcdError::MemberNotFound);
        }
        self.update(batch, |m| {
            if let Some(r) = m.members.get_mut(&a.id) {
                if !a.peer_urls.is_empty() {
                    r.peer_urls = a.peer_urls.clone();
                } else {
                    r.name = a.name.clone();
                    r.client_urls = a.client_urls.clone();
                }
            }
        });
        Ok(self.current().list())
    }
}
