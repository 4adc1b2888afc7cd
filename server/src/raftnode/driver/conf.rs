//! Membership changes on the raft thread: proposing one (refusing what raft
//! would silently drop), and what follows when one takes effect.

use std::sync::atomic::Ordering;

use raft::prelude::*;
use raft::StateRole;

use super::Driver;
use crate::error::EtcdError;
use crate::raftnode::{conf_change, ids_hex, MemberChange, StateMachine};

impl<S: StateMachine> Driver<S> {
    /// Proposes a membership change. raft turns a change it cannot take now
    /// (another one still unapplied) into an empty entry and says nothing,
    /// so such a change is refused here, before it reaches raft.
    pub(super) fn propose_conf_change(&mut self, id: u64, change: MemberChange, node_id: u64, context: Vec<u8>) {
        if self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf() {
            self.applier.dropped(id, EtcdError::Unhealthy);
            return;
        }
        if let Err(e) = self.raw.propose_conf_change(Vec::new(), conf_change(change, node_id, context)) {
            self.applier.dropped(id, self.dropped_error(e));
        }
    }

    /// Why raft did not take a proposal, as etcd tells the client.
    pub(super) fn dropped_error(&self, e: raft::Error) -> EtcdError {
        match e {
            raft::Error::ProposalDropped if self.raw.raft.leader_id == raft::INVALID_ID => EtcdError::NoLeader,
            raft::Error::ProposalDropped => EtcdError::LeaderChanged,
            other => EtcdError::Internal(other.to_string()),
        }
    }

    /// A conf change took effect: members of the old configuration may have
    /// applied and shown entries up to the log's end, so read barriers wait
    /// for this member's apply to get there.
    pub(super) fn conf_changed(&mut self, cs: ConfState, change: MemberChange, node_id: u64) {
        tracing::info!(?change, member = format!("{node_id:x}"), voters = ?ids_hex(&cs.voters),
            learners = ?ids_hex(&cs.learners), "membership changed");
        if change == MemberChange::Remove && node_id == self.raw.raft.id {
            tracing::warn!("this member was removed from the cluster");
            self.status.removed.store(true, Ordering::Release);
        }
        self.log.set_conf_state(cs);
        self.sole_from = self.sole_from.max(self.raw.raft.raft_log.last_index());
        self.publish_sole_leader();
    }
}
