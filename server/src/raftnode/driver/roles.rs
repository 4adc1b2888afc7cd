//! What the raft thread publishes of its role: the known leader (read
//! rounds fail when it changes), whether read barriers may pass at once
//! (the lone-leader shortcut), and the status figures.

use std::sync::atomic::Ordering;

use raft::StateRole;

use super::Driver;
use crate::raftnode::StateMachine;

impl<S: StateMachine> Driver<S> {
    /// Whether read barriers may pass at once: this member leads, is the
    /// only voter, and has applied what earlier leaders and configurations
    /// committed (a new leader's log ends with its own first entry, so
    /// reaching the end it had then means everything before is applied).
    /// Cleared in the same turn as the leadership or conf change that ends
    /// it, before this thread steps any message from another member.
    pub(super) fn publish_sole_leader(&mut self) {
        let r = &self.raw.raft;
        let leads = r.state == StateRole::Leader;
        if leads && self.sole_term != r.term {
            self.sole_term = r.term;
            self.sole_from = self.sole_from.max(r.raft_log.last_index());
        }
        // Learners count too: one may show an entry this leader has committed
        // but not yet applied. (raft's own `is_singleton` would also pass a
        // leader that a conf change just removed.)
        let conf = r.prs().conf();
        let alone = conf.voters().is_singleton() && conf.voters().contains(r.id) && conf.learners().is_empty();
        let sole = leads && alone && self.applied >= self.sole_from;
        self.status.sole_leader.store(sole, Ordering::Release);
    }

    /// Publishes the known leader; read rounds raft has not confirmed fail
    /// when a known leader is lost or replaced (raft drops them with the
    /// old term). Rounds asked while there was none are asked again.
    pub(super) fn leader_is(&mut self, leader: u64) {
        let before = self.status.leader();
        if before != 0 && leader != before {
            self.reads.leader_changed();
        }
        self.status.set_leader(leader);
    }

    pub(super) fn publish_status(&mut self) {
        self.publish_sole_leader();
        let r = &self.raw.raft;
        self.status.term.store(r.term, Ordering::Release);
        self.status.commit_index.store(r.raft_log.committed, Ordering::Release);
        self.status.applied_index.store(self.applied, Ordering::Release);
        self.status.wal_syncs.store(self.wal.syncs(), Ordering::Release);
        let leader = if r.state == StateRole::Leader { r.id } else { r.leader_id };
        self.leader_is(leader);
    }
}
