//! Where the raft node starts from: a new log for a new member, or the
//! newest snapshot and the WAL after it, checked against what the state
//! machine has applied (a log that ends below it is refused).

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::*;

use super::log_store::LogStore;
use super::{MemberChange, NodeConfig, NodeError, StateMachine};
use crate::proto::ferrocdpb::ConfChangeContext;
use crate::snap::{SnapMeta, Snapshotter};
use crate::wal::{LogEntry, Wal};

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
    // An empty log at 0; a member joining an existing cluster gets every
    // entry, or a snapshot, from the leader.
    snapshotter.save(&SnapMeta::default())?;
    let mut wal = Wal::create(&cfg.wal_dir, 1)?;
    let log = LogStore::new(ConfState::default(), 0, 0);
    if !cfg.initial_members.is_empty() {
        bootstrap_log(cfg, &mut wal, &log)?;
    }
    Ok(Recovered { log, wal, applied: 0, snapshot_index: 0 })
}

/// A new cluster's log starts, as etcd's does, with one committed conf
/// change per initial member (term 1), so that the log alone tells a
/// member that joins later who the founders were. They take effect in raft
/// at once; the state machine applies them as it applies any entry.
fn bootstrap_log(cfg: &NodeConfig, wal: &mut Wal, log: &LogStore) -> Result<(), NodeError> {
    let changes = cfg.initial_members.iter().map(|(id, ctx)| (MemberChange::AddVoter, *id, ctx.clone())).collect();
    commit_conf_changes(wal, log, 1, 1, changes)?;
    let voters = cfg.initial_members.iter().map(|(id, _)| *id).collect();
    log.set_conf_state(ConfState { voters, ..Default::default() });
    Ok(())
}

/// Writes conf change entries from index `first` on, of `term`, to the WAL
/// as committed (one write, one fsync) and to the log, replacing whatever
/// the log held from `first` on; returns the new commit index.
fn commit_conf_changes(
    wal: &mut Wal,
    log: &LogStore,
    first: u64,
    term: u64,
    changes: Vec<(MemberChange, u64, Vec<u8>)>,
) -> Result<u64, NodeError> {
    let codec = |e: protobuf::ProtobufError| NodeError::Raft(raft::Error::CodecError(e));
    let mut entries = Vec::new();
    for (i, (change, id, context)) in changes.into_iter().enumerate() {
        let cc = super::conf_change(change, id, context);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = term;
        e.index = first + i as u64;
        e.data = cc.write_to_bytes().map_err(codec)?.into();
        entries.push(e);
    }
    let records = entries
        .iter()
        .map(|e| Ok(LogEntry { index: e.index, term: e.term, data: e.write_to_bytes().map_err(codec)? }))
        .collect::<Result<Vec<_>, NodeError>>()?;
    let commit = first - 1 + entries.len() as u64;
    // On replay, a record for an index replaces the suffix from there.
    wal.save(Some(crate::wal::HardState { term, vote: 0, commit }), &records, true)?;
    log.truncate_after(first - 1);
    log.append(&entries);
    log.set_hard_state(HardState { term, commit, ..Default::default() });
    Ok(commit)
}

fn restore<S: StateMachine>(cfg: &NodeConfig, snapshotter: &Snapshotter, sm: &S) -> Result<Recovered, NodeError> {
    let meta = snapshotter.load_newest()?.unwrap_or_default();
    if sm.applied_index() < meta.index {
        return Err(NodeError::BackendBehindSnapshot { backend: sm.applied_index(), snapshot: meta.index });
    }
    // The membership stored with the backend's applied index is newer than
    // the snapshot's: conf changes applied since are not replayed to raft.
    let cs = match sm.voters() {
        Some(v) => ConfState { voters: v.voters, learners: v.learners, ..Default::default() },
        None => conf_state(&meta),
    };
    let log = LogStore::new(cs, meta.index, meta.term);
    if meta.index > 0 {
        log.set_snapshot(meta.index, meta.term, conf_state(&meta));
    }
    let (mut wal, replay) = Wal::open(&cfg.wal_dir, meta.index)?;
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
    let commit = match cfg.force_new_cluster {
        true => force_new_cluster(cfg, &mut wal, &log, commit, hs.term.max(meta.term))?,
        false => commit,
    };
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

/// `--force-new-cluster` (etcd's `restartAsStandaloneNode`): entries past
/// the commit are dropped (no quorum acknowledged them), and a removal of
/// every other member is appended and committed, so this member restarts as
/// the only voter of the same cluster with all it had committed. Returns
/// the new commit index.
fn force_new_cluster(
    cfg: &NodeConfig,
    wal: &mut Wal,
    log: &LogStore,
    commit: u64,
    term: u64,
) -> Result<u64, NodeError> {
    let cs = log.conf_state();
    let others: Vec<u64> = cs.voters.iter().chain(&cs.learners).copied().filter(|id| *id != cfg.id).collect();
    let removal = ConfChangeContext { proposal_id: 0, member: None }.encode_to_vec();
    let changes = others.iter().map(|id| (MemberChange::Remove, *id, removal.clone())).collect();
    let new_commit = commit_conf_changes(wal, log, commit + 1, term, changes)?;
    log.set_conf_state(ConfState { voters: vec![cfg.id], ..Default::default() });
    tracing::warn!(
        removed = ?super::ids_hex(&others),
        commit,
        "--force-new-cluster: restarting as the only member; uncommitted entries dropped"
    );
    Ok(new_commit)
}

fn wal_behind(cfg: &NodeConfig, wal_end: u64, backend: u64, snapshot: u64) -> NodeError {
    NodeError::WalBehind { dir: cfg.wal_dir.clone(), wal_end, backend, snapshot }
}

fn conf_state(meta: &SnapMeta) -> ConfState {
    ConfState { voters: meta.voters.clone(), learners: meta.learners.clone(), ..Default::default() }
}
