//! Read barriers (raft's ReadIndex) on their way through raft: the ones
//! that arrive in a loop turn are asked together as one round; raft confirms
//! a round with an index; a round is answered once apply reaches it. A new
//! leader drops ReadIndex requests silently until it commits an entry of its
//! term, so a round unanswered for `RETRY` is asked again.
//!
//! Barriers reach the raft thread through an intake that wakes it only
//! when no round is out: under load a round's confirmation picks up what
//! arrived meanwhile, instead of every read waking the thread for nothing.
//!
//! On the leader, followers' ReadIndex requests join its own rounds instead
//! of each costing raft a heartbeat to every member: a request that arrived
//! before a round was asked is answered with that round's index, which is at
//! least the commit index the request found, as raft would answer it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use tokio::sync::oneshot;

use crate::error::EtcdError;

/// How long a round may go unanswered before it is asked again.
const RETRY: Duration = Duration::from_millis(500);

pub(super) type ReadWaiter = oneshot::Sender<Result<(), EtcdError>>;

/// Who waits for a round: a read on this member, or a follower's ReadIndex
/// request (answered with raft's MsgReadIndexResp carrying its context).
pub(super) enum Waiter {
    Local(ReadWaiter),
    Peer { from: u64, ctx: Vec<u8> },
}

impl Waiter {
    /// Whether anyone still waits for the answer: a follower asks again
    /// under a new context after `RETRY` itself, so a peer's request is not.
    fn wanted(&self) -> bool {
        match self {
            Waiter::Local(w) => !w.is_closed(),
            Waiter::Peer { .. } => false,
        }
    }
}

/// A follower's request answered by a confirmed round.
#[derive(Debug, PartialEq)]
pub(super) struct PeerAnswer {
    pub to: u64,
    pub ctx: Vec<u8>,
    pub index: u64,
}

/// Where reads leave their barriers for the raft thread.
#[derive(Default)]
pub(super) struct ReadIntake {
    /// Barriers not yet taken; None once the raft thread is gone.
    waiting: Mutex<Option<Vec<ReadWaiter>>>,
    /// The raft thread has no round out and took everything: the next
    /// barrier must wake it.
    idle: AtomicBool,
}

impl ReadIntake {
    /// Leaves a barrier; true if the raft thread must be woken for it.
    /// A stopped node's barrier fails at once.
    pub(super) fn push(&self, waiter: ReadWaiter) -> bool {
        match self.waiting.lock().as_mut() {
            Some(waiting) => waiting.push(waiter),
            None => {
                let _ = waiter.send(Err(EtcdError::Stopped));
                return false;
            }
        }
        self.idle.swap(false, Ordering::AcqRel)
    }

    fn take(&self) -> Vec<ReadWaiter> {
        self.waiting.lock().as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Everything waiting, or, with nothing waiting, the intake marked
    /// idle so that the next barrier wakes the raft thread (checked again
    /// after marking, for one that came in between).
    fn take_or_idle(&self) -> Vec<ReadWaiter> {
        let waiters = self.take();
        if !waiters.is_empty() {
            return waiters;
        }
        self.idle.store(true, Ordering::Release);
        let late = self.take();
        if !late.is_empty() {
            self.idle.store(false, Ordering::Release);
        }
        late
    }

    /// The raft thread is gone: barriers waiting and to come fail.
    fn close(&self) {
        for w in self.waiting.lock().take().unwrap_or_default() {
            let _ = w.send(Err(EtcdError::Stopped));
        }
    }
}

pub(super) struct ReadQueue {
    intake: Arc<ReadIntake>,
    /// This member's ID, first in every request context: the leader keeps
    /// pending ReadIndex requests by context and ignores a second request
    /// with one it already holds, so contexts must differ across members.
    member: [u8; 8],
    /// Followers' requests not yet asked (this member's own barriers wait
    /// in the intake).
    peers: Vec<Waiter>,
    /// Rounds raft is confirming, by request context.
    asked: HashMap<u64, (Instant, Vec<Waiter>)>,
    seq: u64,
    /// Confirmed rounds waiting for apply to reach their index.
    ready: Vec<(u64, Vec<ReadWaiter>)>,
}

impl ReadQueue {
    /// Contexts count up from the start time, so that none repeats one an
    /// earlier run of this member may have left pending at the leader.
    pub(super) fn new(member: u64, intake: Arc<ReadIntake>) -> ReadQueue {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        *intake.waiting.lock() = Some(Vec::new());
        // The thread takes what waits at its first turn; after that, the
        // first barrier wakes it.
        intake.idle.store(true, Ordering::Release);
        ReadQueue {
            intake,
            member: member.to_be_bytes(),
            peers: Vec::new(),
            asked: HashMap::new(),
            seq: start,
            ready: Vec::new(),
        }
    }

    /// A follower's ReadIndex request, taken while this member leads.
    pub(super) fn push_peer(&mut self, from: u64, ctx: Vec<u8>) {
        self.peers.push(Waiter::Peer { from, ctx });
    }

    /// The request context to ask raft's ReadIndex with for the barriers
    /// that arrived since the last round, if any did.
    /// One round at a time (as etcd's read loop): barriers that arrive
    /// while a round is out wait for the next one, so that under load each
    /// ReadIndex (a heartbeat to every follower) answers many reads.
    /// Followers' requests are only answered by a leader's rounds: one that
    /// lost leadership since taking them drops them (the followers ask again).
    pub(super) fn ask_new(&mut self, now: Instant, leading: bool) -> Option<Vec<u8>> {
        if !self.asked.is_empty() {
            return None;
        }
        let mut waiters: Vec<Waiter> = self.intake.take_or_idle().into_iter().map(Waiter::Local).collect();
        let peers = std::mem::take(&mut self.peers);
        if leading {
            waiters.extend(peers);
        }
        if waiters.is_empty() {
            return None;
        }
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
                let waiters: Vec<Waiter> = waiters.into_iter().filter(Waiter::wanted).collect();
                if !waiters.is_empty() {
                    contexts.push(self.ask(waiters, now));
                }
            }
        }
        contexts
    }

    fn ask(&mut self, waiters: Vec<Waiter>, now: Instant) -> Vec<u8> {
        self.seq += 1;
        self.asked.insert(self.seq, (now, waiters));
        let mut ctx = self.member.to_vec();
        ctx.extend_from_slice(&self.seq.to_be_bytes());
        ctx
    }

    /// Raft confirmed the round asked with `ctx`: it passes once apply
    /// reaches `index`; the followers' requests in it are answered now.
    pub(super) fn confirmed(&mut self, ctx: &[u8], index: u64) -> Vec<PeerAnswer> {
        let Some(seq) = ctx.strip_prefix(self.member.as_slice()) else { return Vec::new() };
        let ctx = seq.try_into().map(u64::from_be_bytes).unwrap_or(0);
        let Some((_, waiters)) = self.asked.remove(&ctx) else { return Vec::new() };
        let mut local = Vec::with_capacity(waiters.len());
        let mut peers = Vec::new();
        for w in waiters {
            match w {
                Waiter::Local(w) => local.push(w),
                Waiter::Peer { from, ctx } => peers.push(PeerAnswer { to: from, ctx, index }),
            }
        }
        if !local.is_empty() {
            self.ready.push((index, local));
        }
        peers
    }

    /// `waiter` passes once apply reaches `index` (at once if `applied`
    /// has), as a confirmed round does.
    pub(super) fn wait_applied(&mut self, index: u64, applied: u64, waiter: ReadWaiter) {
        if index <= applied {
            let _ = waiter.send(Ok(()));
        } else {
            self.ready.push((index, vec![waiter]));
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
    /// elsewhere), followers' requests are dropped as raft drops them.
    /// Confirmed rounds still pass once applied.
    pub(super) fn leader_changed(&mut self) {
        self.peers.clear();
        for (_, (_, waiters)) in self.asked.drain() {
            for w in waiters {
                if let Waiter::Local(w) = w {
                    let _ = w.send(Err(EtcdError::LeaderChanged));
                }
            }
        }
    }

    /// The node stops: barriers never asked fail with etcd's "server
    /// stopped" (the others' senders go with the queue, which their
    /// callers also see as stopped).
    pub(super) fn stop(&mut self) {
        self.intake.close();
    }
}

/// However the raft thread ends (a panic included), reads stop waiting.
impl Drop for ReadQueue {
    fn drop(&mut self) {
        self.intake.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> (ReadWaiter, oneshot::Receiver<Result<(), EtcdError>>) {
        oneshot::channel()
    }

    fn queue(member: u64) -> (ReadQueue, Arc<ReadIntake>) {
        let intake = Arc::new(ReadIntake::default());
        (ReadQueue::new(member, intake.clone()), intake)
    }

    #[test]
    fn rounds_are_asked_confirmed_answered_and_retried() {
        let (mut q, intake) = queue(7);
        let (mut other, other_intake) = queue(8);
        let start = Instant::now();
        assert_eq!(q.ask_new(start, false), None, "nothing to ask");
        let ((a, mut ra), (b, mut rb)) = (waiter(), waiter());
        assert!(intake.push(a), "the first barrier on an idle thread wakes it");
        assert!(!intake.push(b), "the next one need not");
        let ctx = q.ask_new(start, false).expect("one round for both");
        assert_eq!(q.ask_new(start, false), None);
        // Another member's contexts never equal this one's.
        let (o, _ro) = waiter();
        other_intake.push(o);
        assert_ne!(other.ask_new(start, false).expect("a round"), ctx);
        // Not confirmed in time: asked again under a new context; the old
        // context's late confirmation is ignored.
        assert!(q.retry(start + RETRY / 2).is_empty());
        let again = q.retry(start + RETRY);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0], ctx);
        assert!(q.confirmed(&ctx, 1).is_empty());
        assert!(q.confirmed(&again[0], 5).is_empty());
        q.answer(4);
        assert!(ra.try_recv().is_err() && rb.try_recv().is_err(), "answered before apply reached 5");
        q.answer(5);
        assert_eq!((ra.try_recv().unwrap(), rb.try_recv().unwrap()), (Ok(()), Ok(())));
        // A round whose callers are gone is not asked again.
        let (c, rc) = waiter();
        intake.push(c);
        q.ask_new(start, false);
        drop(rc);
        assert!(q.retry(start + RETRY).is_empty());
        // One round at a time: what arrives meanwhile waits for it, without
        // waking the thread (the confirmation picks it up).
        assert_eq!(q.ask_new(start, false), None, "nothing waiting: the intake turns idle");
        let ((e, mut re), (f, mut rf)) = (waiter(), waiter());
        assert!(intake.push(e));
        let first = q.ask_new(start, false).expect("a round");
        assert!(!intake.push(f), "a round is out: no wake-up");
        assert_eq!(q.ask_new(start, false), None, "a second round while one is out");
        q.confirmed(&first, 9);
        let second = q.ask_new(start, false).expect("the next round once the first is confirmed");
        // A change of leader fails the rounds raft has not confirmed.
        q.leader_changed();
        assert_eq!(rf.try_recv().unwrap(), Err(EtcdError::LeaderChanged));
        q.confirmed(&second, 9);
        q.answer(9);
        assert_eq!(re.try_recv().unwrap(), Ok(()));
        // Stopping fails what was never asked, and what comes after.
        let (d, mut rd) = waiter();
        intake.push(d);
        q.stop();
        assert_eq!(rd.try_recv().unwrap(), Err(EtcdError::Stopped));
        let (late, mut rlate) = waiter();
        assert!(!intake.push(late));
        assert_eq!(rlate.try_recv().unwrap(), Err(EtcdError::Stopped));
    }

    #[test]
    fn apply_waits_pass_once_apply_reaches_their_index() {
        let (mut q, _intake) = queue(1);
        let ((a, mut ra), (b, mut rb)) = (waiter(), waiter());
        q.wait_applied(5, 5, a);
        assert_eq!(ra.try_recv().unwrap(), Ok(()), "applied already: at once");
        q.wait_applied(7, 5, b);
        q.answer(6);
        assert!(rb.try_recv().is_err(), "passed before apply reached 7");
        q.answer(7);
        assert_eq!(rb.try_recv().unwrap(), Ok(()));
    }

    #[test]
    fn followers_requests_join_the_leaders_rounds() {
        let (mut q, intake) = queue(1);
        let start = Instant::now();
        let (a, mut ra) = waiter();
        intake.push(a);
        q.push_peer(2, b"f2-1".to_vec());
        q.push_peer(3, b"f3-1".to_vec());
        let round = q.ask_new(start, true).expect("one round for all three");
        // A request arriving while the round is out waits for the next one.
        q.push_peer(2, b"f2-2".to_vec());
        let answers = q.confirmed(&round, 12);
        assert_eq!(
            answers,
            vec![
                PeerAnswer { to: 2, ctx: b"f2-1".to_vec(), index: 12 },
                PeerAnswer { to: 3, ctx: b"f3-1".to_vec(), index: 12 }
            ]
        );
        q.answer(12);
        assert_eq!(ra.try_recv().unwrap(), Ok(()));
        let next = q.ask_new(start, true).expect("the waiting request's round");
        assert_eq!(q.confirmed(&next, 13), vec![PeerAnswer { to: 2, ctx: b"f2-2".to_vec(), index: 13 }]);
        // Requests taken as leader are dropped, not answered, once this
        // member no longer leads (the follower asks again); its own reads
        // still go on.
        q.push_peer(3, b"f3-2".to_vec());
        assert_eq!(q.ask_new(start, false), None, "no round for a follower's request alone");
        q.push_peer(3, b"f3-3".to_vec());
        let (b, _rb) = waiter();
        intake.push(b);
        let own = q.ask_new(start, false).expect("a round for its own read");
        assert!(q.confirmed(&own, 14).is_empty());
        // Nor are they asked again when a round goes unanswered, nor kept
        // across a change of leader.
        q.push_peer(2, b"f2-3".to_vec());
        q.ask_new(start, true).expect("a round");
        assert!(q.retry(start + RETRY).is_empty());
        q.push_peer(2, b"f2-4".to_vec());
        q.leader_changed();
        assert_eq!(q.ask_new(start, true), None);
    }
}
