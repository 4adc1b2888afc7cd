//! Snapshots on the raft thread: the one a leader sends (described as of
//! now), the one a leader sent (installed in place of the state machine's
//! state), and the periodic one that lets the WAL and the log be trimmed.

use raft::prelude::*;

use super::Driver;
use crate::raftnode::{NodeError, StateMachine, Voters};
use crate::snap::SnapMeta;
use crate::wal;

impl<S: StateMachine> Driver<S> {
    /// A snapshot for a peer describes the state applied now, with the
    /// configuration now (as etcd's merged snapshot does), not the last one
    /// saved: a member added since the last one must find itself in it, or
    /// raft on its side ignores it. The image that travels with it is taken
    /// later, so it holds at least everything up to this index.
    pub(super) fn snapshot_as_of_now(&self, m: &mut Message) {
        let Some(term) = self.log.term_of(self.applied) else { return };
        let meta = m.mut_snapshot().mut_metadata();
        if self.applied <= meta.index {
            return;
        }
        meta.index = self.applied;
        meta.term = term;
        meta.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
    }

    /// Installs a snapshot the leader sent: the image replaces the state
    /// machine's state (it may have applied past the snapshot's index), then
    /// the snapshot file, the log and the WAL start after it. A crash in
    /// between leaves a backend ahead of the WAL, which start-up refuses
    /// with a clear error rather than serve from.
    pub(super) fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), NodeError> {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let image = match self.incoming.take() {
            Some((at, path)) if at == index => path,
            _ => return Err(NodeError::SnapshotImageMissing(index)),
        };
        let applied = self.applier.restore(&image).map_err(NodeError::StateMachine)?;
        let _ = std::fs::remove_file(&image);
        let cs = meta.get_conf_state();
        self.snapshotter.save(&SnapMeta { index, term, voters: cs.voters.clone(), learners: cs.learners.clone() })?;
        self.log.apply_snapshot(snap);
        let h = self.raw.raft.hard_state();
        let hs = wal::HardState { term: h.term.max(term), vote: h.vote, commit: h.commit.max(index) };
        self.wal.save(Some(hs), &[], true)?;
        self.persisted_commit = hs.commit;
        self.wal.purge(index)?;
        self.last_snap = index;
        self.applied = self.applied.max(applied).max(index);
        self.sole_from = self.sole_from.max(index);
        tracing::info!(index, term, applied, "installed the leader's snapshot");
        Ok(())
    }

    /// Every `snapshot_count` applied entries: make the backend durable,
    /// record a snapshot, trim the in-memory log and purge WAL segments.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        if self.applied < self.last_snap + self.snapshot_count {
            return Ok(());
        }
        // The snapshot covers what the backend holds once synced, with the
        // membership stored beside it (raft's own may be ahead of apply).
        let synced = self.applier.sync().map_err(NodeError::StateMachine)?;
        let index = synced.applied;
        let Some(term) = self.log.term_of(index) else {
            return Ok(());
        };
        let voters = synced.voters.unwrap_or_else(|| {
            let cs = self.log.conf_state();
            Voters { voters: cs.voters, learners: cs.learners }
        });
        self.snapshotter.save(&SnapMeta {
            index,
            term,
            voters: voters.voters.clone(),
            learners: voters.learners.clone(),
        })?;
        let cs = ConfState { voters: voters.voters, learners: voters.learners, ..Default::default() };
        self.log.set_snapshot(index, term, cs);
        self.log.compact(index.saturating_sub(self.catch_up_entries));
        let purged = self.wal.purge(index)?;
        tracing::info!(index, term, purged_wal_segments = purged, "saved snapshot");
        self.last_snap = index;
        Ok(())
    }
}
