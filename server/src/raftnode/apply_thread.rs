//! Applies committed entries on a thread of their own, so that the raft
//! thread writes and fsyncs the next entries while the backend applies the
//! previous ones (raft-rs hands each committed entry out once, and is told
//! later how far apply got). Entries committed while a batch applies go into
//! the next backend batch together.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use raft::eraftpb::{Entry, EntryType};

use super::{CommittedEntry, NodeError, NodeMsg, StateMachine};
use crate::error::EtcdError;

enum ApplyMsg {
    Entries(Vec<Entry>),
    Sync(Sender<Result<(), EtcdError>>),
    Dropped(u64, EtcdError),
}

pub(super) struct ApplyThread {
    tx: Option<Sender<ApplyMsg>>,
    thread: Option<JoinHandle<()>>,
}

impl ApplyThread {
    /// Starts applying; progress (`NodeMsg::Applied`) and failure
    /// (`NodeMsg::ApplyFailed`) are reported to the raft thread on `report`.
    pub(super) fn start<S: StateMachine>(sm: S, report: Sender<NodeMsg>) -> Result<ApplyThread, NodeError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || run(sm, rx, report))
            .map_err(NodeError::Thread)?;
        Ok(ApplyThread { tx: Some(tx), thread: Some(thread) })
    }

    fn send(&self, msg: ApplyMsg) {
        // A closed channel means the thread failed, which it reported.
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }

    pub(super) fn apply(&self, entries: Vec<Entry>) {
        if !entries.is_empty() {
            self.send(ApplyMsg::Entries(entries));
        }
    }

    pub(super) fn dropped(&self, id: u64, err: EtcdError) {
        self.send(ApplyMsg::Dropped(id, err));
    }

    /// Makes everything handed over so far applied and durable.
    pub(super) fn sync(&self) -> Result<(), EtcdError> {
        let (done, wait) = crossbeam_channel::bounded(1);
        self.send(ApplyMsg::Sync(done));
        wait.recv().unwrap_or(Err(EtcdError::Stopped))
    }

    /// Syncs, then ends the thread.
    pub(super) fn stop(&mut self) -> Result<(), EtcdError> {
        let result = self.sync();
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }
}

/// How long the thread waits for entries before calling `StateMachine::idle`.
const IDLE_TICK: Duration = Duration::from_millis(10);

/// The next message, calling `idle` while none comes; None once closed.
fn next_msg<S: StateMachine>(sm: &mut S, rx: &Receiver<ApplyMsg>) -> Option<Result<ApplyMsg, EtcdError>> {
    loop {
        match rx.recv_timeout(IDLE_TICK) {
            Ok(msg) => return Some(Ok(msg)),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = sm.idle() {
                    return Some(Err(e));
                }
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn run<S: StateMachine>(mut sm: S, rx: Receiver<ApplyMsg>, report: Sender<NodeMsg>) {
    let mut next = next_msg(&mut sm, &rx);
    while let Some(msg) = next.take() {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                let _ = report.send(NodeMsg::ApplyFailed(e));
                return;
            }
        };
        match msg {
            ApplyMsg::Entries(mut entries) => {
                loop {
                    match rx.try_recv() {
                        Ok(ApplyMsg::Entries(more)) => entries.extend(more),
                        Ok(other) => {
                            next = Some(Ok(other));
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let batch: Vec<CommittedEntry<'_>> = entries
                    .iter()
                    .map(|e| CommittedEntry {
                        index: e.index,
                        term: e.term,
                        data: if e.get_entry_type() == EntryType::EntryNormal { &e.data } else { &[] },
                    })
                    .collect();
                if let Err(e) = sm.apply(&batch) {
                    let _ = report.send(NodeMsg::ApplyFailed(e));
                    return;
                }
                if let Some(last) = entries.last() {
                    let _ = report.send(NodeMsg::Applied(last.index));
                }
            }
            ApplyMsg::Sync(done) => {
                let _ = done.send(sm.sync());
            }
            ApplyMsg::Dropped(id, err) => sm.proposal_dropped(id, err),
        }
        if next.is_none() {
            next = next_msg(&mut sm, &rx);
        }
    }
}
