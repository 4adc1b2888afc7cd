//! Applies committed entries on a thread of their own, so that the raft
//! thread writes and fsyncs the next entries while the backend applies the
//! previous ones (raft-rs hands each committed entry out once, and is told
//! later how far apply got). Entries committed while a batch applies go into
//! the next backend batch together.
//!
//! A few entries while the thread has nothing to do are applied in place on
//! the raft thread instead: handing them over would cost a thread wake-up,
//! more than applying them (the single client's write waits for both).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{CommittedEntry, ConfChangeEntry, MemberChange, NodeError, NodeMsg, StateMachine, Voters};
use crate::error::EtcdError;
use parking_lot::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};

/// A committed entry on its way to the state machine.
pub(super) struct ToApply {
    pub index: u64,
    pub term: u64,
    /// The proposal, or a conf change's context.
    pub data: Vec<u8>,
    /// The change, the member, and whether raft accepted it.
    pub conf_change: Option<(MemberChange, u64, bool)>,
}

/// Where the state machine stands after a sync.
pub(super) struct Synced {
    pub applied: u64,
    pub voters: Option<Voters>,
}

enum ApplyMsg {
    Entries(Vec<ToApply>),
    /// Entries applied in place made background work due.
    Background,
    Sync(Sender<Result<Synced, EtcdError>>),
    Restore(std::path::PathBuf, Sender<Result<u64, EtcdError>>),
    Dropped(u64, EtcdError),
}

/// Most entries applied in place on the raft thread.
const IN_PLACE_MAX: usize = 4;

/// What the raft thread and the apply thread share.
struct Shared<S> {
    sm: Mutex<S>,
    /// `Entries` messages sent and not yet applied: while any are, entries
    /// must queue behind them.
    queued: AtomicUsize,
}

pub(super) struct ApplyThread<S> {
    shared: Arc<Shared<S>>,
    tx: Option<Sender<ApplyMsg>>,
    thread: Option<JoinHandle<()>>,
}

impl<S: StateMachine> ApplyThread<S> {
    /// Starts applying; progress (`NodeMsg::Applied`) and failure
    /// (`NodeMsg::ApplyFailed`) are reported to the raft thread on `report`.
    pub(super) fn start(sm: S, report: Sender<NodeMsg>) -> Result<ApplyThread<S>, NodeError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared { sm: Mutex::new(sm), queued: AtomicUsize::new(0) });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || run(&for_thread, rx, report))
            .map_err(NodeError::Thread)?;
        Ok(ApplyThread { shared, tx: Some(tx), thread: Some(thread) })
    }

    fn send(&self, msg: ApplyMsg) {
        // A closed channel means the thread failed, which it reported.
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }

    /// Applies `entries` in place if they are few and nothing is queued or
    /// applying (then returns the last index applied), else hands them to
    /// the thread, which reports its progress.
    pub(super) fn apply(&self, entries: Vec<ToApply>) -> Result<Option<u64>, EtcdError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(None);
        };
        if entries.len() <= IN_PLACE_MAX && self.shared.queued.load(Ordering::Acquire) == 0 {
            // Only this thread queues entries, so none can slip in ahead
            // once the count is 0 and the lock is held.
            if let Some(mut sm) = self.shared.sm.try_lock() {
                sm.apply(&committed(&entries))?;
                if sm.background_due() {
                    self.send(ApplyMsg::Background);
                }
                return Ok(Some(last));
            }
        }
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        self.send(ApplyMsg::Entries(entries));
        Ok(None)
    }

    pub(super) fn dropped(&self, id: u64, err: EtcdError) {
        self.send(ApplyMsg::Dropped(id, err));
    }

    /// Makes everything handed over so far applied and durable.
    pub(super) fn sync(&self) -> Result<Synced, EtcdError> {
        let (done, wait) = std::sync::mpsc::channel();
        self.send(ApplyMsg::Sync(done));
        wait.recv().unwrap_or(Err(EtcdError::Stopped))
    }

    /// Replaces the state machine's state with a snapshot image, after
    /// everything handed over before; returns the index the image applied.
    pub(super) fn restore(&self, image: &std::path::Path) -> Result<u64, EtcdError> {
        let (done, wait) = std::sync::mpsc::channel();
        self.send(ApplyMsg::Restore(image.to_path_buf(), done));
        wait.recv().unwrap_or(Err(EtcdError::Stopped))
    }

    /// Syncs, then ends the thread.
    pub(super) fn stop(&mut self) -> Result<(), EtcdError> {
        let result = self.sync().map(|_| ());
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }
}

/// How long the thread waits for entries before calling `StateMachine::idle`.
const IDLE_TICK: Duration = Duration::from_millis(10);

fn committed(entries: &[ToApply]) -> Vec<CommittedEntry<'_>> {
    entries
        .iter()
        .map(|e| match e.conf_change {
            None => CommittedEntry { index: e.index, term: e.term, data: &e.data, conf_change: None },
            Some((change, node_id, accepted)) => CommittedEntry {
                index: e.index,
                term: e.term,
                data: &[],
                conf_change: Some(ConfChangeEntry { change, node_id, context: &e.data, accepted }),
            },
        })
        .collect()
}

/// The next message, calling `background` while none comes; None once closed.
fn next_msg<S: StateMachine>(shared: &Shared<S>, rx: &Receiver<ApplyMsg>) -> Option<Result<ApplyMsg, EtcdError>> {
    loop {
        match rx.recv_timeout(IDLE_TICK) {
            Ok(msg) => return Some(Ok(msg)),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = shared.sm.lock().background() {
                    return Some(Err(e));
                }
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Tells the raft thread when the apply thread dies in a panic, so that the
/// node stops rather than waits for applies that will never come.
struct ReportPanic(Sender<NodeMsg>);

impl Drop for ReportPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.send(NodeMsg::ApplyFailed(EtcdError::Internal("the apply thread panicked".into())));
        }
    }
}

fn run<S: StateMachine>(shared: &Shared<S>, rx: Receiver<ApplyMsg>, report: Sender<NodeMsg>) {
    let _report_panic = ReportPanic(report.clone());
    let mut next = next_msg(shared, &rx);
    while let Some(msg) = next.take() {
        match msg.and_then(|msg| handle(shared, &rx, msg, &mut next)) {
            Ok(Some(last)) => {
                let _ = report.send(NodeMsg::Applied(last));
            }
            Ok(None) => {}
            Err(e) => {
                let _ = report.send(NodeMsg::ApplyFailed(e));
                return;
            }
        }
        if next.is_none() {
            next = next_msg(shared, &rx);
        }
    }
}

/// Handles one message, and with entries every entries message queued
/// behind them (one backend batch); returns the last index applied, if any.
/// A message of another kind met on the way is left in `next`.
fn handle<S: StateMachine>(
    shared: &Shared<S>,
    rx: &Receiver<ApplyMsg>,
    msg: ApplyMsg,
    next: &mut Option<Result<ApplyMsg, EtcdError>>,
) -> Result<Option<u64>, EtcdError> {
    match msg {
        ApplyMsg::Entries(mut entries) => {
            let mut messages = 1;
            loop {
                match rx.try_recv() {
                    Ok(ApplyMsg::Entries(more)) => {
                        entries.extend(more);
                        messages += 1;
                    }
                    Ok(other) => {
                        *next = Some(Ok(other));
                        break;
                    }
                    Err(_) => break,
                }
            }
            let mut sm = shared.sm.lock();
            let applied = sm.apply(&committed(&entries)).and_then(|()| sm.background());
            // Counted down once applied: until then the raft thread queues
            // behind them.
            shared.queued.fetch_sub(messages, Ordering::AcqRel);
            applied.map(|()| entries.last().map(|e| e.index))
        }
        ApplyMsg::Background => shared.sm.lock().background().map(|()| None),
        ApplyMsg::Sync(done) => {
            let mut sm = shared.sm.lock();
            let synced = sm.sync().map(|()| Synced { applied: sm.applied_index(), voters: sm.voters() });
            let _ = done.send(synced);
            Ok(None)
        }
        ApplyMsg::Restore(image, done) => {
            let _ = done.send(shared.sm.lock().restore(&image));
            Ok(None)
        }
        ApplyMsg::Dropped(id, err) => {
            shared.sm.lock().proposal_dropped(id, err);
            Ok(None)
        }
    }
}
