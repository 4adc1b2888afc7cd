//! Where the raft node starts from: a new log for a new member, or the
//! newest snapshot and the WAL after it, checked against what the state
//! machine has applied (a log that ends below it is refused).

use protobuf::Message as _;
use raft::prelude::*;

use super::log_store::LogStore;
use super::{NodeConfig, NodeError, StateMachine};
use crate::snap::{SnapMeta, Snapshotter};
use crate::wal::Wal;

pub(super) struct Recovered {
    pub log: LogStore,
    pub wal: Wal,
    /// Where raft starts applying from.
    pub applied: u64,
    /// The newest snapshot's index.
    pub snapshot_index: u64,
}

/// Opens the log in `cfg.wal_dir`, or creates it for a new member.
pub(super) fn open<S: StateMachine>(
    cfg: &NodeConfig,
    snapshotter: &Snapshotter,
    sm: &S,
) -> Result<Recovered, NodeError> {
    if Wal::exists(&cfg.wal_dir) {
        return restore(cfg, snapshotter, sm);
    }
    // A backend that applied entries came with a log (a restored
    // snapshot's backend has applied none).
    if sm.applied_index() > 0 {
        return Err(wal_behind(cfg, 0, sm.applied_index(), 0));
    }
    // The membership of a new cluster is recorded as a snapshot at 0.
    let meta = SnapMeta { voters: cfg.initial_voters.clone(), ..Default::default() };
    snapshotter.save(&meta)?;
    let wal = Wal::create(&cfg.wal_dir, 1)?;
    Ok(Recovered { log: LogStore::new(conf_state(&meta), 0, 0), wal, applied: 0, snapshot_index: 0 })
}

fn restore<S: StateMachine>(cfg: &NodeConfig, snapshotter: &Snapshotter, sm: &S) -> Result<Recovered, NodeError> {
    let meta = snapshotter
        .load_newest()?
        .unwrap_or_else(|| SnapMeta { voters: cfg.initial_voters.clone(), ..Default::default() });
    if sm.applied_index() < meta.index {
        return Err(NodeError::BackendBehindSnapshot { backend: sm.applied_index(), snapshot: meta.index });
    }
    let log = LogStore::new(conf_state(&meta), meta.index, meta.term);
    let (wal, replay) = Wal::open(&cfg.wal_dir, meta.index)?;
    // Entries past the log's end would be proposed again at indexes the
    // backend takes as applied, and skipped: refuse instead.
    if replay.last_index < sm.applied_index().max(meta.index) {
        return Err(wal_behind(cfg, replay.last_index, sm.applied_index(), meta.index));
    }
    let entries = replay
        .entries
        .iter()
        .map(|e| Entry::parse_from_bytes(&e.data).map_err(|err| NodeError::Raft(raft::Error::CodecError(err))))
        .collect::<Result<Vec<_>, _>>()?;
    log.append(&entries);
    let last_index = entries.last().map_or(meta.index, |e| e.index);
    let hs = replay.hard_state;
    let commit = hs.commit.clamp(meta.index, last_index);
    log.set_hard_state(HardState { term: hs.term.max(meta.term), vote: hs.vote, commit, ..Default::default() });
    let applied = sm.applied_index().min(commit);
    tracing::info!(
        snapshot_index = meta.index,
        wal_entries = entries.len(),
        last_index,
        commit,
        applied,
        repaired_bytes = replay.repaired_bytes,
        "restored raft log"
    );
    Ok(Recovered { log, wal, applied, snapshot_index: meta.index })
}

fn wal_behind(cfg: &NodeConfig, wal_end: u64, backend: u64, snapshot: u64) -> NodeError {
    NodeError::WalBehind { dir: cfg.wal_dir.clone(), wal_end, backend, snapshot }
}

fn conf_state(meta: &SnapMeta) -> ConfState {
    ConfState { voters: meta.voters.clone(), learners: meta.learners.clone(), ..Default::default() }
}
