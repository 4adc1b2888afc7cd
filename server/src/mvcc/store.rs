//! The store: values by revision in sled, the key index in memory, and the
//! applied raft index and current revision committed in the same atomic
//! batch as the data they describe.
//!
//! Applied changes collect in memory (the backlog, which reads see) and go
//! to sled in one atomic batch every `--backend-batch-interval` or
//! `--backend-batch-limit` writes, as etcd commits its backend transaction
//! (the batch is written on the applier's thread).
//! Each sled batch costs IO-buffer writes with a synchronous writeback, far
//! more than its inserts; the WAL, replayed above the applied index sled
//! holds, is what makes applied entries durable meanwhile.
//!
//! A defragmentation moves every revision record it finds into the base
//! (`mvcc::base`), a file of its own laid out compactly, which sled cannot
//! do; sled then holds the records written since and the mutable ones.
//!
//! Around it: the records' layout in sled and the files are
//! `mvcc::backend`'s, the in-memory state `mvcc::state`'s, the backlog
//! `mvcc::backlog`'s, reads `mvcc::read`'s, writes `mvcc::txn`'s, the value
//! encoding `mvcc::record`'s; snapshots, their installation and
//! defragmentation have files of their own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockUpgradableReadGuard, RwLockWriteGuard};

use super::backend::{
    io, meta_key, mutable_records, open_sled, rev_key, revision_of, settle_dirs, side, swap_in, Backend, KEY_PREFIX,
    META_APPLIED_KEY,
};
use super::backlog::{Backlog, BatchLimits};
use super::base::Base;
use super::digest::{Digest, DIGEST_KEY};
pub use super::error::MvccError;
use super::error::Result;
use super::key_index::KeyIndex;
use super::leases::{LeaseRecord, LeaseTable};
use super::record::{decode_value, Record};
use super::revision::Revision;
use super::state::State;
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// A stretch of the store's history (see `Store::history`).
#[derive(Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    /// The first revision not read: where the next read starts.
    pub next: i64,
    /// The store's revision when it was read.
    pub current: i64,
}

pub struct Store {
    pub(super) path: PathBuf,
    /// Swapped for a compact copy by `defragment`. Lock order everywhere:
    /// `state`, then `writing_out`, then `history_pin`, then `db`.
    pub(super) db: RwLock<Backend>,
    pub(super) state: RwLock<State>,
    /// Held while a backlog goes to sled, so that batches land in order and
    /// a forced write-out waits for one under way.
    writing_out: Mutex<()>,
    limits: BatchLimits,
    /// A group of entries failed part way: memory no longer matches any
    /// raft index, so nothing more may reach sled (the node stops, and the
    /// WAL replays from sled's last consistent state).
    pub(super) poisoned: AtomicBool,
    /// Held (shared) while a snapshot copies revision records; a write-out
    /// deletes compacted ones only when it can take it exclusively, else it
    /// leaves them in `deferred` for a later one (never waiting for a
    /// snapshot with every reader and writer held up).
    pub(super) history_pin: RwLock<()>,
    pub(super) deferred: Mutex<Vec<[u8; 17]>>,
    /// While a defragmentation copies the backend: revision records that
    /// compaction deleted meanwhile, to delete from the copy too.
    pub(super) compaction_log: Mutex<Option<Vec<[u8; 17]>>>,
    /// One defragmentation at a time.
    pub(super) defrag_lock: Mutex<()>,
    /// `KeyIndex::held_bytes` as of the last commit, for the quota check
    /// on every write without the state lock.
    pub(super) held: AtomicU64,
}

/// A point in the store's history that compaction leaves readable while
/// this is held (see `Store::pin_history`).
pub(super) struct Pinned<'a> {
    pub rev: i64,
    pub compact_rev: i64,
    _pin: RwLockReadGuard<'a, ()>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        settle_dirs(path)?;
        let (db, state) = load(path)?;
        let held = state.index.held_bytes();
        Ok(Store {
            path: path.to_path_buf(),
            db: RwLock::new(db),
            state: RwLock::new(state),
            writing_out: Mutex::new(()),
            limits: BatchLimits::default(),
            poisoned: AtomicBool::new(false),
            held: AtomicU64::new(held),
            history_pin: RwLock::new(()),
            deferred: Mutex::new(Vec::new()),
            compaction_log: Mutex::new(None),
            defrag_lock: Mutex::new(()),
        })
    }

    /// Replaces the backend with the closed database at `fresh_path`, and
    /// everything held in memory with what it holds, while every reader and
    /// writer waits (installing a leader's snapshot).
    pub(super) fn replace_with(&self, fresh_path: &Path) -> Result<()> {
        let mut state = self.state.write();
        let _in_order = self.writing_out.lock();
        let _pin = self.history_pin.write();
        let mut db = self.db.write();
        // What compaction left to delete belongs to the replaced history.
        self.deferred.lock().clear();
        let old = std::mem::replace(&mut *db, Backend::placeholder()?);
        drop(old);
        // Serving from the placeholder would lose writes: a failure from here
        // on stops the member, whose restart settles the directories.
        let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
            tracing::error!(error = %e, "{what} while installing a snapshot; aborting");
            std::process::abort();
        };
        if let Err(e) = swap_in(&self.path, fresh_path) {
            fail("cannot swap the backend in", &e);
        }
        match load(&self.path) {
            Ok((backend, loaded)) => {
                *db = backend;
                self.held.store(loaded.index.held_bytes(), Ordering::Release);
                *state = loaded;
            }
            Err(e) => fail("cannot load the installed backend", &e),
        }
        let old_path = side(&self.path, "old");
        std::fs::remove_dir_all(&old_path).map_err(io("removing", &old_path))?;
        Ok(())
    }

    /// Whether no backlog is on its way to sled.
    pub(super) fn writing_out_idle(&self) -> bool {
        self.writing_out.try_lock().is_some()
    }

    /// Sets when applied changes go to sled.
    pub fn with_batch_limits(mut self, limits: BatchLimits) -> Store {
        self.limits = limits;
        self
    }

    /// Writes the backlog to sled if it is due; returns how long that took.
    /// The applier calls it after each group and when idle, so the interval
    /// holds without writes too.
    pub fn write_out_if_due(&self) -> Result<Option<Duration>> {
        // Readers go on while the check runs: it is made after every group.
        let state = self.state.upgradable_read();
        if !state.backlog.due(&self.limits) {
            return Ok(None);
        }
        self.write_out(RwLockUpgradableReadGuard::upgrade(state)).map(Some)
    }

    /// Whether `write_out_if_due` would write out now.
    pub fn write_out_due(&self) -> bool {
        self.state.read().backlog.due(&self.limits)
    }

    /// Hands the backlog to sled, letting reads and the next writes go on
    /// meanwhile (they find its records in `writing`).
    fn write_out(&self, mut state: RwLockWriteGuard<'_, State>) -> Result<Duration> {
        let started = Instant::now();
        let _in_order = self.writing_out.lock();
        let mut backlog = std::mem::take(&mut state.backlog);
        state.writing = std::mem::take(&mut backlog.records);
        drop(state);
        self.apply_to_sled(backlog)?;
        Ok(started.elapsed())
    }

    /// Puts everything applied into sled before returning, holding writers
    /// (for reads of sled itself: snapshots, hashes, flushes).
    fn write_out_now(&self, state: &mut State) -> Result<()> {
        let _in_order = self.writing_out.lock();
        state.writing.clear();
        self.apply_to_sled(std::mem::take(&mut state.backlog))
    }

    /// One atomic sled batch: the backlog, plus the revision records that
    /// compaction dropped, unless a snapshot holds them (then a later batch
    /// deletes them, never waiting for the snapshot), plus the digest of
    /// the revision records that leaves in sled.
    fn apply_to_sled(&self, backlog: Backlog) -> Result<()> {
        let Backlog { mut batch, digest: mut change, .. } = backlog;
        if self.poisoned.load(Ordering::Acquire) {
            return Err(MvccError::Corrupt("an apply failed part way; the backend keeps its last whole batch".into()));
        }
        let mut deferred = self.deferred.lock();
        let pin = if deferred.is_empty() { None } else { self.history_pin.try_write() };
        let db = self.db.read();
        if pin.is_some() {
            let mut log = self.compaction_log.lock();
            for key in deferred.drain(..) {
                let rev = revision_of(&key)?;
                if !db.base.mark_dead(rev) {
                    batch.remove(key.as_slice());
                    change.remove(rev);
                }
                if let Some(log) = log.as_mut() {
                    log.push(key);
                }
            }
        }
        let mut digest = db.digest.lock();
        let next = digest.merged(change);
        if next != *digest {
            batch.insert(DIGEST_KEY, &next.encode());
        }
        db.apply_batch(batch)?;
        *digest = next;
        Ok(())
    }

    pub fn consistent_index(&self) -> u64 {
        self.state.read().consistent_index
    }

    /// Raft term of the entry at the consistent index.
    pub fn consistent_term(&self) -> u64 {
        self.state.read().consistent_term
    }

    pub fn current_rev(&self) -> i64 {
        self.state.read().current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.state.read().compact_rev
    }

    pub fn leases(&self) -> Vec<(i64, LeaseRecord)> {
        self.state.read().leases.all()
    }

    /// The keys attached to a lease, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.state.read().leases.keys(id)
    }

    pub fn key_count(&self) -> usize {
        self.state.read().index.len()
    }

    /// The bytes of keys and values the store holds for its users, as the
    /// quota counts them (`KeyIndex::held_bytes`).
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Bytes the backend occupies on disk.
    pub fn db_size(&self) -> u64 {
        self.db.read().size()
    }

    /// Makes everything applied so far durable. Blocking: call it from a
    /// dedicated or blocking thread.
    pub fn flush(&self) -> Result<()> {
        self.write_out_now(&mut self.state.write())?;
        self.db.read().flush()?;
        Ok(())
    }

    /// Reads every record of every tree and decodes each key-value record as
    /// reads do (sled checks each page it reads from disk): what `ferrocdutl
    /// check` runs after `open`, which decodes the rest. Returns the records read.
    pub fn verify(&self) -> Result<u64> {
        let db = self.db.read();
        let mut records = 0;
        for name in db.tree_names() {
            for item in db.open_tree(&name)?.iter() {
                let (k, v) = item?;
                if name == db.name() && k.first() == Some(&KEY_PREFIX) {
                    let rev = revision_of(&k)?;
                    decode_value(&v).map_err(|e| MvccError::Corrupt(format!("revision {rev:?}: {e}")))?;
                }
                records += 1;
            }
        }
        // The base checked every record's checksum when it opened.
        for item in db.base.range(Revision::new(0, 0), Revision::new(i64::MAX, 0)) {
            let (rev, v) = item?;
            decode_value(&v).map_err(|e| MvccError::Corrupt(format!("revision {rev:?} (base): {e}")))?;
            records += 1;
        }
        Ok(records)
    }

    /// A checksum of the key-value history up to `rev` (0: the current
    /// revision), for comparing members: (hash, compact revision, revision
    /// hashed). Compacted revisions are gone from the store, so what is
    /// hashed is what compaction kept, as in etcd.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let at = self.pin_history(|_, _| Ok(()))?;
        let rev = if rev <= 0 { at.rev } else { rev };
        if rev > at.rev {
            return Err(MvccError::FutureRev);
        }
        if rev < at.compact_rev {
            return Err(MvccError::Compacted);
        }
        let mut h = crc32fast::Hasher::new();
        self.hash_revisions(&mut h, rev)?;
        Ok((h.finalize(), at.compact_rev, rev))
    }

    /// A checksum of everything the backend holds (etcd's Hash), in key
    /// order, at one point, without holding writers for the scan.
    pub fn hash_all(&self) -> Result<u32> {
        let (mut before, mut after) = (crc32fast::Hasher::new(), Vec::new());
        let at = self.pin_history(|k, v| {
            if k < [KEY_PREFIX].as_slice() {
                before.update(k);
                before.update(v);
            } else {
                after.push((k.to_vec(), v.to_vec()));
            }
            Ok(())
        })?;
        let mut h = before;
        self.hash_revisions(&mut h, at.rev)?;
        for (k, v) in after {
            h.update(&k);
            h.update(&v);
        }
        Ok(h.finalize())
    }

    /// Feeds the revision records up to `rev` to `h`, in order.
    fn hash_revisions(&self, h: &mut crc32fast::Hasher, rev: i64) -> Result<()> {
        for item in self.db.read().records(Revision::new(0, 0), Revision::new(rev + 1, 0)) {
            let (rev, v) = item?;
            h.update(&rev_key(rev));
            h.update(&v);
        }
        Ok(())
    }

    /// The changes of whole revisions from `from` on, at most `max_revs`
    /// of them, in order: what a watcher that fell behind catches up with.
    /// Bounded so that the read lock it holds never keeps writers long.
    pub fn history(&self, from: i64, max_revs: usize) -> Result<History> {
        let state = self.state.read();
        if from < state.compact_rev {
            return Err(MvccError::Compacted);
        }
        let mut history = History { events: Vec::new(), next: state.current_rev + 1, current: state.current_rev };
        if from > state.current_rev {
            return Ok(history);
        }
        let start = Revision::new(from.max(1), 0);
        // Records not (surely) in sled are the newest ones: sled serves
        // the history below the first of them, memory the rest.
        let mut unwritten: Vec<(Revision, &Record)> = (state.backlog.records.iter().chain(&state.writing))
            .filter(|(rev, _)| **rev >= start)
            .map(|(rev, r)| (*rev, r))
            .collect();
        unwritten.sort_unstable_by_key(|(rev, _)| *rev);
        unwritten.dedup_by_key(|(rev, _)| *rev);
        let end = unwritten.first().map_or(Revision::new(state.current_rev + 1, 0), |(rev, _)| *rev);
        let db = self.db.read();
        let written = db.records(start, end).map(|item| -> Result<(Revision, bool, KeyValue)> {
            let (rev, v) = item?;
            let (tombstone, kv) = decode_value(&v)?;
            Ok((rev, tombstone, kv))
        });
        let records = written.chain(unwritten.into_iter().map(|(rev, r)| Ok((rev, r.tombstone, r.kv.clone()))));
        let mut revs = 0;
        let mut last_main = 0;
        for item in records {
            let (rev, tombstone, kv) = item?;
            if rev.main != last_main {
                if revs == max_revs {
                    history.next = rev.main;
                    break;
                }
                revs += 1;
                last_main = rev.main;
            }
            let kind = if tombstone { EventType::Delete } else { EventType::Put };
            history.events.push(Event { r#type: kind as i32, kv: Some(kv), prev_kv: None });
        }
        Ok(history)
    }

    /// For reads of the whole store at one point (snapshots, hashes) that
    /// must not hold writers: hands every record but the revision records
    /// to `f` under the state lock, and returns the current and compact
    /// revisions with a pin that keeps compaction from deleting revision
    /// records until dropped. Revision records up to `rev` never change
    /// otherwise, so they can be read without the state lock.
    pub(super) fn pin_history(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<Pinned<'_>> {
        let mut state = self.state.write();
        self.write_out_now(&mut state)?;
        let state = RwLockWriteGuard::downgrade(state);
        let pin = self.history_pin.read();
        for item in mutable_records(&self.db.read()) {
            let (k, v) = item?;
            f(&k, &v)?;
        }
        Ok(Pinned { rev: state.current_rev, compact_rev: state.compact_rev, _pin: pin })
    }

    /// The current revision, with everything up to it in sled.
    pub(super) fn written_revision(&self) -> Result<i64> {
        let mut state = self.state.write();
        self.write_out_now(&mut state)?;
        Ok(state.current_rev)
    }

    /// Blocks every reader and writer while `f` runs (the end of a
    /// defragmentation), with the current revision and all of it in sled.
    pub(super) fn exclusive<T>(&self, f: impl FnOnce(i64) -> Result<T>) -> Result<T> {
        let mut state = self.state.write();
        self.write_out_now(&mut state)?;
        f(state.current_rev)
    }

    /// A meta value as last written (the backlog goes to sled first).
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.write_out_now(&mut self.state.write())?;
        Ok(self.db.read().get(meta_key(name))?.map(|v| v.to_vec()))
    }

    /// Writes one meta value durably (bootstrap facts such as IDs).
    pub fn put_meta_durable(&self, name: &str, value: &[u8]) -> Result<()> {
        self.db.read().insert(meta_key(name), value)?;
        self.flush()
    }
}

/// Opens the backend at `path` and rebuilds the in-memory state from it.
fn load(path: &Path) -> Result<(Backend, State)> {
    let db = open_sled(path)?;
    let mut state = State {
        index: KeyIndex::default(),
        leases: LeaseTable::load(&db)?,
        current_rev: 1,
        // As in etcd, nothing compacted is -1, so compacting at 0 succeeds once.
        compact_rev: -1,
        consistent_index: 0,
        consistent_term: 0,
        backlog: Backlog::default(),
        writing: HashMap::new(),
    };
    if let Some(v) = db.get(META_APPLIED_KEY)? {
        state.decode_applied(&v)?;
    }
    // The base's records come first: they are all older than sled's.
    let base = Base::open(&path.join(super::base::FILE), |rev, v| state.restore_record(rev, v))?;
    let mut digest = Digest::default();
    for item in db.scan_prefix([KEY_PREFIX]) {
        let (k, v) = item?;
        let rev = revision_of(&k)?;
        state.restore_record(rev, &v)?;
        digest.add(rev);
    }
    let stored = db.get(DIGEST_KEY)?.map(|v| Digest::decode(&v)).transpose()?;
    if stored.is_some_and(|stored| stored != digest) {
        let written = stored.map_or(0, |d| d.count());
        return Err(MvccError::Corrupt(format!(
            "its revision records are not the ones it wrote ({} found where {written} were written, or records \
             differ): sled lost or brought back records",
            digest.count()
        )));
    }
    // Records a compaction had not deleted yet when the member stopped
    // (deferred behind a snapshot), and the base's compacted ones:
    // delete them now. A backend without a digest (a fresh copy) gets one.
    let orphans = state.index.compact(state.compact_rev);
    if !orphans.is_empty() || stored.is_none() {
        let mut batch = sled::Batch::default();
        for rev in &orphans {
            if !base.mark_dead(*rev) {
                batch.remove(rev_key(*rev).as_slice());
                digest.remove(*rev);
            }
        }
        batch.insert(DIGEST_KEY, &digest.encode());
        db.apply_batch(batch)?;
        if !orphans.is_empty() {
            tracing::info!(records = orphans.len(), "dropped compacted records left by the last run");
        }
    }
    Ok((Backend::new(db, base, digest), state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{KeyRange, KvRead, RangeOptions, WriteBatch};

    fn all(key: &[u8]) -> KeyRange<'_> {
        KeyRange::new(key, b"\0")
    }

    /// A store that writes every group to sled (when the applier asks).
    fn eager(path: &Path) -> Store {
        Store::open(path).unwrap().with_batch_limits(BatchLimits { ops: 1, ..Default::default() })
    }

    fn commit_and_write_out(store: &Store, b: WriteBatch<'_>, index: u64) {
        b.commit(index, 1);
        store.write_out_if_due().unwrap().expect("due");
    }

    fn put(store: &Store, key: &[u8], value: &str, index: u64) {
        let mut b = store.write();
        b.txn().put(key, value.as_bytes().to_vec(), 0);
        b.commit(index, 1);
    }

    #[test]
    fn compaction_behind_a_snapshot_deletes_later_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = eager(dir.path());
        for (i, v) in ["1", "2"].into_iter().enumerate() {
            let mut b = store.write();
            b.txn().put(b"a", v.as_bytes().to_vec(), 0);
            commit_and_write_out(&store, b, i as u64 + 1);
        }
        let old = rev_key(Revision::new(2, 0));
        let pinned = store.history_pin.read();
        let mut b = store.write();
        b.compact(3).unwrap();
        commit_and_write_out(&store, b, 3); // must not wait for the pin
        assert!(store.db.read().get(old).unwrap().is_some(), "kept while a snapshot copies");
        drop(pinned);
        let mut b = store.write();
        b.txn().put(b"b", b"1".to_vec(), 0);
        commit_and_write_out(&store, b, 4);
        assert!(store.db.read().get(old).unwrap().is_none(), "deleted by the next write-out");

        // Deferred and then stopped: the next open deletes what is left.
        let pinned = store.history_pin.read();
        let mut b = store.write();
        b.txn().put(b"b", b"2".to_vec(), 0);
        commit_and_write_out(&store, b, 5);
        let mut b = store.write();
        b.compact(5).unwrap();
        commit_and_write_out(&store, b, 6);
        drop(pinned);
        let left = rev_key(Revision::new(4, 0));
        assert!(store.db.read().get(left).unwrap().is_some());
        store.flush().unwrap();
        drop(store);
        super::super::backend::wait_closed(dir.path()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.db.read().get(left).unwrap().is_none());
        assert_eq!(store.read().range(KeyRange::new(b"b", b""), RangeOptions::default()).unwrap().kvs[0].value, b"2");
    }

    #[test]
    fn writes_reads_compaction_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.current_rev(), 1);
            let mut b = store.write();
            {
                let mut t = b.txn();
                assert_eq!(t.get(b"a").unwrap(), None);
                t.put(b"a", b"1".to_vec(), 0);
                t.put(b"b", b"1".to_vec(), 0);
                // a read in the same txn sees its own writes
                assert_eq!(t.range(all(b"a"), RangeOptions::default()).unwrap().count, 2);
            }
            {
                let mut t = b.txn();
                let prev = t.get(b"a").unwrap().unwrap();
                assert_eq!((prev.mod_revision, prev.version), (2, 1));
                t.put(b"a", b"2".to_vec(), 0);
            }
            b.commit(7, 1);
            let r = store.read();
            let res = r.range(KeyRange::new(b"a", b""), RangeOptions::default()).unwrap();
            assert_eq!(res.rev, 3);
            assert_eq!(
                res.kvs[0],
                KeyValue {
                    key: b"a".to_vec(),
                    create_revision: 2,
                    mod_revision: 3,
                    version: 2,
                    value: b"2".to_vec(),
                    lease: 0
                }
            );
            let old = r.range(KeyRange::new(b"a", b""), RangeOptions { rev: 2, ..Default::default() }).unwrap();
            assert_eq!(old.kvs[0].value, b"1");
            assert!(matches!(
                r.range(all(b"a"), RangeOptions { rev: 4, ..Default::default() }),
                Err(MvccError::FutureRev)
            ));
            drop(r);

            let mut b = store.write();
            assert!(b.already_applied(7));
            {
                let mut t = b.txn();
                let gone = t.delete_range(all(b"a")).unwrap();
                assert_eq!(gone.len(), 2);
            }
            b.compact(3).unwrap();
            assert!(matches!(b.compact(3), Err(MvccError::Compacted)));
            b.commit(8, 1);
            let r = store.read();
            assert!(matches!(
                r.range(all(b"a"), RangeOptions { rev: 2, ..Default::default() }),
                Err(MvccError::Compacted)
            ));
            assert_eq!(r.range(all(b"a"), RangeOptions { rev: 3, ..Default::default() }).unwrap().count, 2);
            assert_eq!(r.range(all(b"a"), RangeOptions::default()).unwrap().count, 0);
            drop(r);
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!((store.current_rev(), store.compact_rev(), store.consistent_index()), (4, 3, 8));
        let r = store.read();
        let at3 = r.range(all(b"a"), RangeOptions { rev: 3, limit: 1, ..Default::default() }).unwrap();
        assert_eq!((at3.count, at3.kvs.len(), at3.kvs[0].value.as_slice()), (2, 1, &b"2"[..]));
    }

    #[test]
    fn held_bytes_follow_writes_and_compaction_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.held_bytes(), 0);
        for i in 0..10u64 {
            put(&store, b"key", &"v".repeat(1000), i + 1);
        }
        let ten = store.held_bytes();
        assert_eq!(ten, 10 * (3 + 1000 + super::super::key_index::REVISION_OVERHEAD));
        let mut b = store.write();
        b.compact(11).unwrap();
        b.commit(11, 1);
        assert_eq!(store.held_bytes(), ten / 10, "only the live revision is held");
        store.flush().unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.held_bytes(), ten / 10);
    }

    #[test]
    fn rollback_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.write();
        b.txn().put(b"a", b"1".to_vec(), 0);
        {
            let mut t = b.txn();
            t.delete_range(all(b"a")).unwrap();
            t.put(b"b", b"2".to_vec(), 0);
            t.rollback();
        }
        b.commit(2, 1);
        assert_eq!(store.current_rev(), 2);
        let r = store.read();
        let res = r.range(all(b"a"), RangeOptions::default()).unwrap();
        assert_eq!(res.kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(), [&b"a"[..]]);
        drop(r);
        store.flush().unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!((store.current_rev(), store.key_count()), (2, 1));
    }

    #[test]
    fn applied_changes_wait_in_memory_until_due_and_reach_sled_whole() {
        let dir = tempfile::tempdir().unwrap();
        let limits = BatchLimits { ops: 6, interval: Duration::from_secs(3600) };
        let store = Store::open(dir.path()).unwrap().with_batch_limits(limits);
        put(&store, b"a", "1", 1);
        put(&store, b"b", "1", 2);
        assert!(store.write_out_if_due().unwrap().is_none(), "4 writes: not due");
        put(&store, b"a", "2", 3);
        assert!(store.write_out_if_due().unwrap().is_some(), "6 writes: due");
        // These stay in memory: reads, txns and history still see them.
        put(&store, b"c", "1", 4);
        let mut b = store.write();
        {
            let mut t = b.txn();
            let prev = t.get(b"a").unwrap().expect("a exists");
            t.put(b"a", b"3".to_vec(), 0);
            assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"2"[..], 4));
            t.delete_range(KeyRange::new(b"b", b"")).unwrap();
        }
        b.commit(5, 1);
        assert!(store.db.read().get(rev_key(Revision::new(5, 0))).unwrap().is_none(), "not in sled yet");
        let r = store.read();
        let now = r.range(all(b"a"), RangeOptions::default()).unwrap();
        assert_eq!(now.kvs.iter().map(|kv| kv.value.as_slice()).collect::<Vec<_>>(), [&b"3"[..], b"1"]);
        let before = r.range(all(b"a"), RangeOptions { rev: 4, ..Default::default() }).unwrap();
        assert_eq!(
            before.kvs.iter().map(|kv| (&kv.key[..], &kv.value[..])).collect::<Vec<_>>(),
            [(&b"a"[..], &b"2"[..]), (b"b", b"1")]
        );
        drop(r);
        let h = store.history(3, 100).unwrap();
        let seen: Vec<(i32, i64, &[u8])> = h
            .events
            .iter()
            .map(|e| (e.r#type, e.kv.as_ref().unwrap().mod_revision, &e.kv.as_ref().unwrap().key[..]))
            .collect();
        let (p, d) = (EventType::Put as i32, EventType::Delete as i32);
        assert_eq!(seen, [(p, 3, &b"b"[..]), (p, 4, b"a"), (p, 5, b"c"), (p, 6, b"a"), (d, 6, b"b")]);
        let bounded = store.history(3, 2).unwrap();
        assert_eq!((bounded.events.len(), bounded.next), (2, 5), "the bound spans sled and memory");

        // Stopped without a flush: sled holds the last whole batch, which the
        // WAL replay continues from.
        drop(store);
        super::super::backend::wait_closed(dir.path()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!((store.consistent_index(), store.current_rev(), store.key_count()), (3, 4, 2));
        put(&store, b"c", "1", 4);
        store.flush().unwrap();
        drop(store);
        super::super::backend::wait_closed(dir.path()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!((store.consistent_index(), store.current_rev(), store.key_count()), (4, 5, 3));
    }

    #[test]
    fn a_group_that_fails_part_way_never_reaches_sled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, b"a", "1", 1);
        {
            let mut b = store.write();
            b.txn().put(b"b", b"1".to_vec(), 0);
            // Dropped without a commit, as when an entry fails to apply.
        }
        assert!(matches!(store.flush(), Err(MvccError::Corrupt(_))));
        drop(store);
        super::super::backend::wait_closed(dir.path()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!((store.consistent_index(), store.key_count()), (0, 0), "nothing after the last whole batch");
    }

    #[test]
    fn a_revision_is_only_used_by_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.write();
        {
            let mut t = b.txn();
            assert!(t.delete_range(all(b"nothing")).unwrap().is_empty());
        }
        b.commit(1, 1);
        assert_eq!(store.current_rev(), 1);
    }

    /// A put reads neither the old value nor its lease from the backend; the
    /// key index and the lease table stand in for them, across restarts and
    /// compactions too.
    #[test]
    fn puts_know_creation_version_and_old_lease_without_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let versions = |store: &Store| {
            let kv = store.read().range(all(b"k"), RangeOptions::default()).unwrap().kvs.remove(0);
            (kv.create_revision, kv.mod_revision, kv.version, kv.lease)
        };
        {
            let store = eager(dir.path());
            let mut b = store.write();
            b.put_lease(7, LeaseRecord { ttl: 60, remaining_ttl: 0 });
            b.put_lease(8, LeaseRecord { ttl: 60, remaining_ttl: 0 });
            b.txn().put(b"k", b"1".to_vec(), 7);
            commit_and_write_out(&store, b, 1);
            let mut b = store.write();
            b.txn().put(b"k", b"2".to_vec(), 8);
            commit_and_write_out(&store, b, 2);
            assert_eq!(versions(&store), (2, 3, 2, 8));
            assert_eq!((store.lease_keys(7), store.lease_keys(8)), (vec![], vec![b"k".to_vec()]));
            let mut b = store.write();
            b.compact(3).unwrap();
            commit_and_write_out(&store, b, 3);
            store.flush().unwrap();
        }
        super::super::backend::wait_closed(dir.path()).unwrap();
        let store = eager(dir.path());
        let mut b = store.write();
        {
            let mut t = b.txn();
            assert_eq!(t.lease_of(b"k"), 8);
            t.put(b"k", b"3".to_vec(), 0);
        }
        commit_and_write_out(&store, b, 4);
        assert_eq!(versions(&store), (2, 4, 3, 0));
        assert!(store.lease_keys(8).is_empty(), "detached from its old lease");
        let mut b = store.write();
        b.txn().delete_range(all(b"k")).unwrap();
        b.txn().put(b"k", b"4".to_vec(), 0);
        commit_and_write_out(&store, b, 5);
        assert_eq!(versions(&store), (6, 6, 1, 0), "a new generation starts at version 1");
    }

    /// A txn that fails part way leaves the lease table as it found it.
    #[test]
    fn a_rolled_back_txn_restores_lease_attachments() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.write();
        b.put_lease(7, LeaseRecord { ttl: 60, remaining_ttl: 0 });
        b.put_lease(8, LeaseRecord { ttl: 60, remaining_ttl: 0 });
        b.txn().put(b"a", b"1".to_vec(), 7);
        b.txn().put(b"b", b"1".to_vec(), 7);
        {
            let mut t = b.txn();
            t.put(b"a", b"2".to_vec(), 8);
            t.delete_range(KeyRange::new(b"b", b"")).unwrap();
            assert_eq!((t.lease_of(b"a"), t.lease_of(b"b")), (8, 0));
            t.rollback();
            assert_eq!((t.lease_of(b"a"), t.lease_of(b"b")), (7, 7));
        }
        b.commit(1, 1);
        assert_eq!(store.lease_keys(7), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(store.lease_keys(8).is_empty());
    }
}

#[cfg(test)]
mod damage_tests {
    use std::fs;

    use super::*;
    use crate::mvcc::{KeyRange, KvRead, RangeOptions};

    const RECORDS: usize = 20_000;
    const KEYS: usize = 5_000;

    fn value(i: usize) -> Vec<u8> {
        format!("{i:05}-").repeat(200).into_bytes()
    }

    /// Damage anywhere in sled's file: opening it is an error that says the
    /// backend is damaged (never a panic), or the history is whole up to the
    /// applied index (sled can silently lose records written before newer
    /// ones it keeps: the digest catches that) and every value reads back as
    /// written (or as an error): never a wrong value.
    #[test]
    fn a_damaged_backend_is_an_error_or_reads_true() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            // Many small write-outs over a smaller key space, as a serving
            // member makes them.
            for i in 0..RECORDS {
                let mut b = store.write();
                b.txn().put(format!("k{:05}", i % KEYS).as_bytes(), value(i % KEYS), 0);
                b.commit(i as u64 + 1, 1);
                if i % 50 == 0 {
                    store.flush().unwrap();
                }
            }
            store.flush().unwrap();
        }
        let file = path.join("db");
        let clean = fs::read(&file).unwrap();
        let (mut refused, mut opened) = (0, 0);
        for at in (0..clean.len() - 8).step_by(clean.len() / 40 + 7) {
            let copy = dir.path().join(format!("copy-{at}"));
            fs::create_dir_all(&copy).unwrap();
            for e in fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    fs::copy(e.path(), copy.join(e.file_name())).unwrap();
                }
            }
            let mut bytes = clean.clone();
            bytes[at..at + 8].iter_mut().for_each(|b| *b ^= 0xff);
            fs::write(copy.join("db"), &bytes).unwrap();
            match Store::open(&copy) {
                Err(e) => {
                    assert!(e.is_damage(), "damage at {at}: {e}");
                    refused += 1;
                }
                Ok(store) => {
                    let _ = store.verify();
                    // One revision record per applied entry.
                    let history = store.db.read().scan_prefix([KEY_PREFIX]).count() as u64;
                    assert_eq!(history, store.consistent_index(), "damage at {at}: opened with records missing");
                    let read = store.read();
                    for i in (0..KEYS).step_by(7) {
                        let key = format!("k{i:05}");
                        if let Ok(r) = read.range(KeyRange::new(key.as_bytes(), b""), RangeOptions::default()) {
                            if let Some(kv) = r.kvs.first() {
                                assert_eq!(kv.value, value(i), "damage at {at}: wrong value for {key}");
                            }
                        }
                    }
                    opened += 1;
                }
            }
        }
        assert!(refused + opened >= 40, "every damage tried ({refused} refused, {opened} opened)");
        assert!(refused > 0, "no damage made sled fail: the test lost its point");
    }
}
