//! The raft log as the `raft` crate reads it: entries since the last
//! snapshot, hard state and membership, in memory. The WAL is the durable copy;
//! this is rebuilt from it at start-up.

use std::sync::Arc;

use parking_lot::RwLock;
use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, StorageError};

#[derive(Default)]
struct Core {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry covered by a snapshot (compacted away).
    snap_index: u64,
    snap_term: u64,
    /// Entries `snap_index + 1 ..`.
    entries: Vec<Entry>,
    /// The newest snapshot on disk, served to followers too far behind
    /// (its index is at or above `snap_index`: the log keeps entries
    /// before it for followers that are only a little behind).
    snapshot: Option<SnapshotMetadata>,
}

impl Core {
    fn last_index(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - self.snap_index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

#[derive(Clone, Default)]
pub struct LogStore {
    core: Arc<RwLock<Core>>,
}

impl LogStore {
    /// A log that starts after a snapshot at (`index`, `term`).
    pub fn new(conf_state: ConfState, index: u64, term: u64) -> LogStore {
        let core = Core {
            hard_state: HardState { term, commit: index, ..Default::default() },
            conf_state,
            snap_index: index,
            snap_term: term,
            entries: Vec::new(),
            snapshot: None,
        };
        LogStore { core: Arc::new(RwLock::new(core)) }
    }

    /// Appends entries, replacing any conflicting suffix.
    pub fn append(&self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let mut core = self.core.write();
        let keep = first.index.saturating_sub(core.snap_index + 1) as usize;
        core.entries.truncate(keep);
        core.entries.extend_from_slice(entries);
    }

    /// Drops the entries after `index`.
    pub fn truncate_after(&self, index: u64) {
        let mut core = self.core.write();
        let keep = index.saturating_sub(core.snap_index) as usize;
        core.entries.truncate(keep);
    }

    pub fn set_hard_state(&self, hs: HardState) {
        self.core.write().hard_state = hs;
    }

    pub fn set_commit(&self, commit: u64) {
        self.core.write().hard_state.commit = commit;
    }

    pub fn set_conf_state(&self, cs: ConfState) {
        self.core.write().conf_state = cs;
    }

    pub fn conf_state(&self) -> ConfState {
        self.core.read().conf_state.clone()
    }

    /// Records the newest snapshot on disk (served to lagging followers).
    pub fn set_snapshot(&self, index: u64, term: u64, conf_state: ConfState) {
        let mut meta = SnapshotMetadata { index, term, ..Default::default() };
        meta.set_conf_state(conf_state);
        self.core.write().snapshot = Some(meta);
    }

    /// A snapshot from the leader was installed: the log starts after it.
    pub fn apply_snapshot(&self, snap: &Snapshot) {
        let meta = snap.get_metadata();
        let mut core = self.core.write();
        core.entries.clear();
        core.snap_index = meta.index;
        core.snap_term = meta.term;
        core.conf_state = meta.get_conf_state().clone();
        core.hard_state.commit = core.hard_state.commit.max(meta.index);
        core.hard_state.term = core.hard_state.term.max(meta.term);
        core.snapshot = Some(meta.clone());
    }

    pub fn term_of(&self, idx: u64) -> Option<u64> {
        self.core.read().term(idx).ok()
    }

    /// Drops entries up to and including `index`, remembering its term.
    pub fn compact(&self, index: u64) {
        let mut core = self.core.write();
        if index <= core.snap_index || index > core.last_index() {
            return;
        }
        let Ok(term) = core.term(index) else { return };
        let n = (index - core.snap_index) as usize;
        core.entries.drain(..n);
        core.snap_index = index;
        core.snap_term = term;
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.core.read();
        Ok(RaftState { hard_state: core.hard_state.clone(), conf_state: core.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.core.read();
        if low <= core.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - core.snap_index - 1) as usize;
        let hi = (high - core.snap_index - 1) as usize;
        let mut out = core.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.core.read().term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().last_index())
    }

    /// The newest snapshot's metadata; its data (the backend's image)
    /// travels beside the message (see `transport`).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let core = self.core.read();
        match &core.snapshot {
            Some(meta) if meta.index > 0 && meta.index >= request_index => {
                let mut snap = Snapshot::default();
                snap.set_metadata(meta.clone());
                Ok(snap)
            }
            _ => Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    #[test]
    fn append_overwrites_and_compaction_keeps_terms() {
        let s = LogStore::new(ConfState::default(), 0, 0);
        s.append(&[e(1, 1), e(2, 1), e(3, 1)]);
        s.append(&[e(3, 2), e(4, 2)]);
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(3).unwrap(), 2);
        s.compact(2);
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert!(s.term(1).is_err());
        let got = s.entries(3, 5, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![3, 4]);
        assert!(s.entries(2, 4, None, GetEntriesContext::empty(false)).is_err());
    }
}
