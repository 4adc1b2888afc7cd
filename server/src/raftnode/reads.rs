//! Read barriers (raft's ReadIndex) on their way through raft: the ones
//! that arrive in a loop turn are asked together as one round; raft confirms
//! a round with an index; a round is answered once apply reaches it. A new
//! leader drops ReadIndex requests silently until it commits an entry of its
//! term, so a round unanswered for `RETRY` is asked again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::EtcdError;

/// How long a round may go unanswered before it is asked again.
const RETRY: Duration = Duration::from_millis(500);

pub(super) type ReadWaiter = oneshot::Sender<Result<(), EtcdError>>;

pub(super) struct ReadQueue {
    /// This member's ID, first in every request context: the leader keeps
    /// pending ReadIndex requests by context and ignores a second request
    /// with one it already holds, so contexts must differ across members.
    member: [u8; 8],
    /// Barriers not yet handed to raft.
    new: Vec<ReadWaiter>,
    /// Rounds raft is confirming, by request context.
    asked: HashMap<u64, (Instant, Vec<ReadWaiter>)>,
    seq: u64,
    /// Confirmed rounds waiting for apply to reach their index.
    ready: Vec<(u64, Vec<ReadWaiter>)>,
}

impl ReadQueue {
    /// Contexts count up from the start time, so that none repeats one an
    /// earlier run of this member may have left pending at the leader.
    pub(super) fn new(member: u64) -> ReadQueue {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        ReadQueue {
            member: member.to_be_bytes(),
            new: Vec::new(),
            asked: HashMap::new(),
            seq: start,
            ready: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, waiter: ReadWaiter) {
        self.new.push(waiter);
    }

    /// The request context to ask raft's ReadIndex with for the barriers
    /// that arrived since the last round, if any did.
    /// One round at a time (as etcd's read loop): barriers that arrive
    /// while a round is out wait for the next one, so that under load each
    /// ReadIndex (a heartbeat to every follower) answers many reads.
    pub(super) fn ask_new(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.new.is_empty() || !self.asked.is_empty() {
            return None;
        }
        let waiters = std::mem::take(&mut self.new);
        Some(self.ask(waiters, now))
    }

    /// Rounds unanswered for too long, asked again under new contexts (those
    /// whose callers have all gone are dropped): the contexts to ask with.
    pub(super) fn retry(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let stale: Vec<u64> =
            self.asked.iter().filter(|(_, (at, _))| now.duration_since(*at) >= RETRY).map(|(ctx, _)| *ctx).collect();
        let mut contexts = Vec::new();
        for ctx in stale {
            if let Some((_, waiters)) = self.asked.remove(&ctx) {
                let waiters: Vec<ReadWaiter> = waiters.into_iter().filter(|w| !w.is_closed()).collect();
                if !waiters.is_empty() {
                    contexts.push(self.ask(waiters, now));
                }
            }
        }
        contexts
    }

    fn ask(&mut self, waiters: Vec<ReadWaiter>, now: Instant) -> Vec<u8> {
        self.seq += 1;
        self.asked.insert(self.seq, (now, waiters));
        let mut ctx = self.member.to_vec();
        ctx.extend_from_slice(&self.seq.to_be_bytes());
        ctx
    }

    /// Raft confirmed the round asked with `ctx`: it passes once apply
    /// reaches `index`.
    pub(super) fn confirmed(&mut self, ctx: &[u8], index: u64) {
        let Some(seq) = ctx.strip_prefix(self.member.as_slice()) else { return };
        let ctx = seq.try_into().map(u64::from_be_bytes).unwrap_or(0);
        if let Some((_, waiters)) = self.asked.remove(&ctx) {
            self.ready.push((index, waiters));
        }
    }

    /// Answers the confirmed rounds that apply has reached.
    pub(super) fn answer(&mut self, applied: u64) {
        self.ready.retain_mut(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
            false
        });
    }

    /// Leadership moved: rounds raft has not confirmed fail with etcd's
    /// "leader changed" (raft drops them with the old term; clients retry
    /// elsewhere). Confirmed rounds still pass once applied.
    pub(super) fn leader_changed(&mut self) {
        for (_, (_, waiters)) in self.asked.drain() {
            for w in waiters {
                let _ = w.send(Err(EtcdError::LeaderChanged));
            }
        }
    }

    /// The node stops: barriers never asked fail with etcd's "server
    /// stopped" (the others' senders go with the queue, which their
    /// callers also see as stopped).
    pub(super) fn stop(&mut self) {
        for w in self.new.drain(..) {
            let _ = w.send(Err(EtcdError::Stopped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> (ReadWaiter, oneshot::Receiver<Result<(), EtcdError>>) {
        oneshot::channel()
    }

    #[test]
    fn rounds_are_asked_confirmed_answered_and_retried() {
        let mut q = ReadQueue::new(7);
        let other = ReadQueue::new(8);
        let start = Instant::now();
        assert_eq!(q.ask_new(start), None, "nothing to ask");
        let ((a, mut ra), (b, mut rb)) = (waiter(), waiter());
        q.push(a);
        q.push(b);
        let ctx = q.ask_new(start).expect("one round for both");
        assert_eq!(q.ask_new(start), None);
        // Another member's contexts never equal this one's.
        let mut other = other;
        let (o, _ro) = waiter();
        other.push(o);
        assert_ne!(other.ask_new(start).expect("a round"), ctx);
        // Not confirmed in time: asked again under a new context; the old
        // context's late confirmation is ignored.
        assert!(q.retry(start + RETRY / 2).is_empty());
        let again = q.retry(start + RETRY);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0], ctx);
        q.confirmed(&ctx, 1);
        q.confirmed(&again[0], 5);
        q.answer(4);
        assert!(ra.try_recv().is_err() && rb.try_recv().is_err(), "answered before apply reached 5");
        q.answer(5);
        assert_eq!((ra.try_recv().unwrap(), rb.try_recv().unwrap()), (Ok(()), Ok(())));
        // A round whose callers are gone is not asked again.
        let (c, rc) = waiter();
        q.push(c);
        q.ask_new(start);
        drop(rc);
        assert!(q.retry(start + RETRY).is_empty());
        // One round at a time: what arrives meanwhile waits for it.
        let ((e, mut re), (f, mut rf)) = (waiter(), waiter());
        q.push(e);
        let first = q.ask_new(start).expect("a round");
        q.push(f);
        assert_eq!(q.ask_new(start), None, "a second round while one is out");
        q.confirmed(&first, 9);
        let second = q.ask_new(start).expect("the next round once the first is confirmed");
        // A change of leader fails the rounds raft has not confirmed.
        q.leader_changed();
        assert_eq!(rf.try_recv().unwrap(), Err(EtcdError::LeaderChanged));
        q.confirmed(&second, 9);
        q.answer(9);
        assert_eq!(re.try_recv().unwrap(), Ok(()));
        // Stopping fails what was never asked.
        let (d, mut rd) = waiter();
        q.push(d);
        q.stop();
        assert_eq!(rd.try_recv().unwrap(), Err(EtcdError::Stopped));
    }
}
