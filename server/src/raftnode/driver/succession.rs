//! Who takes over at once from a leader that is gone. raft has every follower
//! wait out its own random election timeout, between one and two election
//! timeouts, after it last heard from the leader; the first to get there
//! campaigns. When the leader's process dies, its followers' links to it
//! break at once, and waiting longer than needed is only lost time: the voter
//! with the lowest ID among the rest campaigns one tick after the shortest
//! timeout instead. Not earlier: with check-quorum, a follower refuses its vote
//! to anyone while it heard from a leader within the shortest timeout, and
//! ticks are not in step across members. Pre-vote keeps a campaign from
//! disturbing a leader that is alive after all (only cut off from this one);
//! one member does this (two only while they disagree on the voters, until a
//! conf change applies on both), so that the vote does not split. Campaigning
//! early is safe in raft whenever it happens; this only changes when. Once per
//! lost leader: raft refuses a campaign while a conf change waits to apply,
//! and the member then waits for its own timeout.

use raft::StateRole;

use super::Driver;
use super::NodeError;
use crate::raftnode::StateMachine;

/// What a follower knows when it decides.
pub(super) struct Follower<'a> {
    pub id: u64,
    pub leader: u64,
    /// Its link to the leader is up.
    pub leader_reachable: bool,
    /// Ticks since it last heard from the leader.
    pub elapsed: usize,
    /// The shortest election timeout, in ticks.
    pub election_timeout: usize,
    pub voters: &'a [u64],
}

/// Whether this follower campaigns now, ahead of its random timeout.
pub(super) fn takes_over(f: &Follower<'_>) -> bool {
    let successor = f.voters.iter().copied().filter(|id| *id != f.leader).min();
    f.leader != raft::INVALID_ID && !f.leader_reachable && f.elapsed > f.election_timeout && successor == Some(f.id)
}

impl<S: StateMachine> Driver<S> {
    /// Campaigns if this member is the one to take over from a lost leader.
    pub(super) fn campaign_if_leader_lost(&mut self) -> Result<(), NodeError> {
        let r = &self.raw.raft;
        if r.state != StateRole::Follower || self.took_over_from == (r.term, r.leader_id) {
            return Ok(());
        }
        let voters: Vec<u64> = r.prs().conf().voters().ids().iter().collect();
        let follower = Follower {
            id: r.id,
            leader: r.leader_id,
            leader_reachable: self.outbound.reachable(r.leader_id),
            elapsed: r.election_elapsed,
            election_timeout: r.election_timeout(),
            voters: &voters,
        };
        if takes_over(&follower) {
            self.took_over_from = (r.term, r.leader_id);
            tracing::info!(leader = format!("{:x}", follower.leader), "leader unreachable: campaigning");
            self.raw.campaign()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_voter_but_the_leader_takes_over_once_the_leader_is_lost() {
        let voters = [3, 1, 2];
        let f = |id, leader_reachable, elapsed| Follower {
            id,
            leader: 1,
            leader_reachable,
            elapsed,
            election_timeout: 10,
            voters: &voters,
        };
        assert!(takes_over(&f(2, false, 11)), "member 2: the lowest but the leader, link down, lease over");
        assert!(!takes_over(&f(3, false, 11)), "member 3 waits for its own timeout");
        assert!(!takes_over(&f(2, true, 15)), "the link to the leader is up: raft's own timeout");
        assert!(!takes_over(&f(2, false, 10)), "others may still hold the leader's lease");
        let no_leader = Follower { leader: raft::INVALID_ID, ..f(2, false, 11) };
        assert!(!takes_over(&no_leader), "no leader to take over from");
        let learner = Follower { id: 4, ..f(4, false, 11) };
        assert!(!takes_over(&learner), "a learner is no voter");
    }
}
