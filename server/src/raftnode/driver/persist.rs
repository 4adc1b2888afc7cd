//! Persisting raft's log on the raft thread: new entries and the hard state
//! go to the WAL in one write and one fdatasync, then to the in-memory log.

use protobuf::Message as _;
use raft::prelude::*;

use super::Driver;
use crate::raftnode::{NodeError, StateMachine};
use crate::wal::{self, LogEntry};

impl<S: StateMachine> Driver<S> {
    pub(super) fn persist(
        &mut self,
        entries: &[Entry],
        hs: Option<HardState>,
        must_sync: bool,
    ) -> Result<(), NodeError> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let records = entries
            .iter()
            .map(|e| Ok(LogEntry { index: e.index, term: e.term, data: e.write_to_bytes()? }))
            .collect::<Result<Vec<_>, protobuf::ProtobufError>>()
            .map_err(|e| NodeError::Raft(raft::Error::CodecError(e)))?;
        // raft-rs reports a commit past the last hard state only in the
        // light ready, in memory: it goes to the WAL with the next
        // entries, as etcd's hard state carries it, so that a restart
        // knows how far the log was committed.
        let hs = match hs {
            Some(h) => Some(h),
            None if !entries.is_empty() && self.raw.raft.raft_log.committed > self.persisted_commit => {
                Some(self.raw.raft.hard_state())
            }
            None => None,
        };
        let wal_hs = hs.as_ref().map(|h| wal::HardState { term: h.term, vote: h.vote, commit: h.commit });
        if let Some(took) = self.wal.save(wal_hs, &records, must_sync)? {
            (self.on_fsync)(took);
        }
        self.log.append(entries);
        if let Some(h) = hs {
            self.persisted_commit = h.commit;
            self.log.set_hard_state(h);
        }
        Ok(())
    }

    /// The commit no entry carried to the WAL yet (at shutdown), so that a
    /// restart starts from it.
    pub(super) fn persist_commit(&mut self) -> Result<(), NodeError> {
        if self.raw.raft.raft_log.committed > self.persisted_commit {
            let h = self.raw.raft.hard_state();
            let hs = wal::HardState { term: h.term, vote: h.vote, commit: h.commit };
            self.wal.save(Some(hs), &[], true)?;
            self.persisted_commit = h.commit;
        }
        Ok(())
    }
}
