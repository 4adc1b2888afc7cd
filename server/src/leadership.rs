//! Moving raft leadership: MoveLeader (with etcd's errors), and the
//! hand-over a leader makes before it stops, to the caught-up voter that has
//! been connected the longest, so that the cluster does not wait out an
//! election timeout.

use std::time::Duration;

use crate::error::EtcdError;
use crate::server::EtcdServer;

impl EtcdServer {
    /// etcd's MoveLeader: only the leader moves leadership, only to a voter.
    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        if !self.is_leader() {
            return Err(EtcdError::NotLeader);
        }
        match self.membership.current().get(target) {
            Some(m) if !m.is_learner => {}
            _ => return Err(EtcdError::BadLeaderTransferee),
        }
        if target == self.member.id {
            return Ok(());
        }
        self.transfer_to(target, self.limits.request_timeout).await
    }

    /// Asks raft to hand leadership to `target` and waits until it leads.
    async fn transfer_to(&self, target: u64, wait: Duration) -> Result<(), EtcdError> {
        let mut leader = self.node.status().watch_leader();
        self.node.transfer_leader(target)?;
        let moved = async {
            loop {
                if *leader.borrow_and_update() == target {
                    return;
                }
                if leader.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(wait, moved).await.map_err(|_| EtcdError::Timeout)?;
        match self.node.status().leader() == target {
            true => Ok(()),
            false => Err(EtcdError::Stopped),
        }
    }

    /// Before a leader stops: hands leadership to the voter whose log is
    /// caught up and whose link has been up the longest, and waits for it
    /// (at most an election timeout). A follower has nothing to do.
    pub async fn hand_over_leadership(&self) {
        if !self.is_leader() {
            return;
        }
        let Ok(Some(progress)) = self.node.progress().await else { return };
        let my_match = progress.iter().find(|p| p.id == self.member.id).map_or(0, |p| p.matched);
        let target = progress
            .iter()
            .filter(|p| p.id != self.member.id && !p.is_learner && p.recent_active)
            .filter_map(|p| self.transport.active_since(p.id).map(|since| (p, since)))
            // Caught up first, then the longest connected.
            .min_by_key(|(p, since)| (p.matched < my_match, *since))
            .map(|(p, _)| p.id);
        let Some(target) = target else {
            tracing::info!("no connected voter to hand leadership to");
            return;
        };
        match self.transfer_to(target, self.election_timeout).await {
            Ok(()) => tracing::info!(to = format!("{target:x}"), "handed leadership over before stopping"),
            Err(e) => tracing::warn!(to = format!("{target:x}"), error = %e, "leadership hand-over did not finish"),
        }
    }
}
