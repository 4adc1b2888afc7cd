//! Leases in time (etcd's lessor). Which leases exist, their TTLs and keys
//! live in the store and change only through raft (grant, revoke,
//! checkpoint); this module keeps when each one expires. The leader renews
//! on keepalive, finds expired leases and proposes their revocation, and
//! checkpoints remaining TTLs through raft so that a restart does not give
//! every lease its whole TTL again.

pub mod driver;
pub mod leader;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::mvcc::LeaseRecord;
use crate::proto::etcdserverpb::LeaseCheckpoint;

/// etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// An expired lease whose revocation was proposed is proposed again after
/// this long if it is still there (the proposal may have been lost).
const REVOKE_RETRY: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
struct Timing {
    ttl: i64,
    expiry: Instant,
    /// The remaining TTL last written by a checkpoint (0: none).
    checkpointed: i64,
    revoke_proposed: Option<Instant>,
}

pub struct Lessor {
    leases: Mutex<HashMap<i64, Timing>>,
    min_ttl: i64,
    /// This member leads and has taken the countdowns over (etcd's primary
    /// lessor); until then a renewal would be overwritten by the takeover.
    primary: tokio::sync::watch::Sender<bool>,
}

/// Renewing a lease with a checkpointed remaining TTL must clear that
/// checkpoint too (else a restart would cut the renewed lease short).
#[derive(Debug, PartialEq, Eq)]
pub struct Renewed {
    pub ttl: i64,
    pub clear_checkpoint: bool,
}

fn expiry_in(now: Instant, secs: i64) -> Instant {
    now + Duration::from_secs(secs.max(0) as u64)
}

impl Lessor {
    pub fn new(min_ttl: i64) -> Lessor {
        Lessor { leases: Mutex::default(), min_ttl, primary: tokio::sync::watch::Sender::new(false) }
    }

    pub fn set_primary(&self, primary: bool) {
        self.primary.send_replace(primary);
    }

    /// Whether this lessor counts the leases down. Only the primary's
    /// countdowns are true: elsewhere each starts when its grant is applied
    /// and never hears of the leader's renewals, so a member that has just
    /// become leader must not expire or checkpoint leases by them before
    /// its takeover (etcd's lessor too expires and checkpoints only as primary).
    fn is_primary(&self) -> bool {
        *self.primary.borrow()
    }

    /// Returns once this lessor is the primary one.
    pub async fn until_primary(&self) {
        let _ = self.primary.subscribe().wait_for(|p| *p).await;
    }

    /// Takes over the leases as the store holds them once the log is fully
    /// applied (at start, and when this member becomes leader): each expires
    /// after its checkpointed remaining TTL if it has one, else after its
    /// whole TTL, counted from now.
    pub fn promote(&self, records: Vec<(i64, LeaseRecord)>) {
        let now = Instant::now();
        let leases = records.into_iter().map(|(id, r)| {
            let left = if r.remaining_ttl > 0 { r.remaining_ttl } else { r.ttl };
            let t = Timing {
                ttl: r.ttl,
                expiry: expiry_in(now, left),
                checkpointed: r.remaining_ttl,
                revoke_proposed: None,
            };
            (id, t)
        });
        *self.leases.lock() = leases.collect();
    }

    /// The TTL a grant gets: at least the minimum (etcd: 1.5 election timeouts, in whole seconds).
    pub fn granted_ttl(&self, requested: i64) -> i64 {
        requested.max(self.min_ttl)
    }

    // Called by the applier, in log order.

    pub fn granted(&self, id: i64, ttl: i64) {
        let t = Timing { ttl, expiry: expiry_in(Instant::now(), ttl), checkpointed: 0, revoke_proposed: None };
        self.leases.lock().insert(id, t);
    }

    pub fn revoked(&self, id: i64) {
        self.leases.lock().remove(&id);
    }

    pub fn checkpointed(&self, id: i64, remaining: i64) {
        if let Some(t) = self.leases.lock().get_mut(&id) {
            t.checkpointed = remaining;
        }
    }

    // Called by the API and the leader's loop.

    /// A keepalive: the lease lives a whole TTL from now. An expired lease
    /// (its revocation is on the way) is not renewed.
    pub fn renew(&self, id: i64) -> Option<Renewed> {
        let now = Instant::now();
        let mut leases = self.leases.lock();
        let t = leases.get_mut(&id)?;
        if t.expiry <= now {
            return None;
        }
        t.expiry = expiry_in(now, t.ttl);
        Some(Renewed { ttl: t.ttl, clear_checkpoint: t.checkpointed > 0 })
    }

    /// (remaining seconds, granted TTL).
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64)> {
        let now = Instant::now();
        let leases = self.leases.lock();
        let t = leases.get(&id)?;
        Some((t.expiry.saturating_duration_since(now).as_secs() as i64, t.ttl))
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Expired leases whose revocation is not already on its way (none
    /// unless primary).
    pub fn take_expired(&self, limit: usize) -> Vec<i64> {
        if !self.is_primary() {
            return Vec::new();
        }
        let now = Instant::now();
        let mut leases = self.leases.lock();
        let mut out = Vec::new();
        for (id, t) in leases.iter_mut() {
            if out.len() == limit {
                break;
            }
            let pending = t.revoke_proposed.is_some_and(|at| now.duration_since(at) < REVOKE_RETRY);
            if t.expiry <= now && !pending {
                t.revoke_proposed = Some(now);
                out.push(*id);
            }
        }
        out
    }

    /// Every lease's remaining TTL, for a checkpoint through raft (none
    /// unless primary).
    pub fn checkpoints(&self) -> Vec<LeaseCheckpoint> {
        if !self.is_primary() {
            return Vec::new();
        }
        let now = Instant::now();
        let leases = self.leases.lock();
        let mut cps: Vec<LeaseCheckpoint> = leases
            .iter()
            .filter(|(_, t)| t.expiry > now)
            .map(|(id, t)| LeaseCheckpoint {
                id: *id,
                // Rounded up: a checkpoint never shortens a lease.
                remaining_ttl: t.expiry.duration_since(now).as_secs_f64().ceil() as i64,
            })
            .collect();
        cps.sort_by_key(|c| c.id);
        cps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_uses_the_checkpointed_remaining_ttl() {
        let l = Lessor::new(2);
        l.granted(9, 5);
        l.promote(vec![
            (1, LeaseRecord { ttl: 100, remaining_ttl: 0 }),
            (2, LeaseRecord { ttl: 100, remaining_ttl: 7 }),
        ]);
        assert_eq!(l.ids(), vec![1, 2], "promote replaces what replay left");
        let (left1, granted1) = l.time_to_live(1).unwrap();
        let (left2, granted2) = l.time_to_live(2).unwrap();
        assert_eq!((granted1, granted2), (100, 100));
        assert!((98..=100).contains(&left1), "{left1}");
        assert!((5..=7).contains(&left2), "{left2}");
        // Renewing the checkpointed one gives its whole TTL and asks to clear the checkpoint.
        assert_eq!(l.renew(2), Some(Renewed { ttl: 100, clear_checkpoint: true }));
        l.checkpointed(2, 0);
        assert_eq!(l.renew(2), Some(Renewed { ttl: 100, clear_checkpoint: false }));
        assert!(l.time_to_live(2).unwrap().0 >= 98);
        assert_eq!(l.renew(3), None);
    }

    #[test]
    fn expired_leases_are_handed_out_once_until_the_retry_time() {
        let l = Lessor::new(1);
        l.promote(vec![(5, LeaseRecord { ttl: 0, remaining_ttl: 0 })]);
        l.set_primary(true);
        assert_eq!(l.take_expired(10), vec![5]);
        assert!(l.take_expired(10).is_empty(), "its revocation is already proposed");
        assert_eq!(l.renew(5), None, "an expired lease is not renewed");
        l.revoked(5);
        assert!(l.ids().is_empty());
        assert_eq!(l.granted_ttl(1), 1);
        l.granted(6, 60);
        let cps = l.checkpoints();
        assert_eq!(cps.len(), 1);
        assert!((59..=60).contains(&cps[0].remaining_ttl));
    }

    #[test]
    fn only_the_primary_expires_and_checkpoints() {
        // A follower's countdowns: lease 1's ran out long ago by its clock,
        // though the leader may have renewed it all along.
        let l = Lessor::new(1);
        l.granted(1, 0);
        l.granted(2, 60);
        assert!(l.take_expired(10).is_empty(), "a lessor that is not primary expired a lease");
        assert!(l.checkpoints().is_empty(), "a lessor that is not primary checkpointed");
        // The takeover resumes the countdowns from the store's checkpoints.
        l.promote(vec![
            (1, LeaseRecord { ttl: 60, remaining_ttl: 30 }),
            (2, LeaseRecord { ttl: 60, remaining_ttl: 0 }),
        ]);
        l.set_primary(true);
        assert!(l.take_expired(10).is_empty(), "a live lease expired after the takeover");
        let cps = l.checkpoints();
        assert_eq!(cps.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!((29..=30).contains(&cps[0].remaining_ttl), "{cps:?}");
        l.set_primary(false);
        assert!(l.checkpoints().is_empty(), "a demoted lessor checkpointed");
    }
}
