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
//! The records' layout in sled is `mvcc::backend`'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockUpgradableReadGuard, RwLockWriteGuard};
use prost::Message;

use super::backend::{
    io, meta_key, mutable_records, open_sled, rev_key, revision_of, settle_dirs, side, Backend, KEY_PREFIX,
    META_APPLIED_KEY,
};
use super::base::Base;
use super::digest::{Digest, DIGEST_KEY};
pub use super::error::MvccError;
use super::error::Result;
use super::key_index::{KeyIndex, KeyRange};
use super::leases::{LeaseRecord, LeaseTable};
use super::revision::Revision;
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

const KIND_PUT: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;

/// The backlog goes to sled at this size whatever the limits say.
const BACKLOG_MAX_BYTES: usize = 16 * 1024 * 1024;

/// When the backlog of applied changes goes to sled (etcd's
/// `--backend-batch-interval` and `--backend-batch-limit`).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub interval: Duration,
    pub ops: usize,
}

impl Default for BatchLimits {
    /// etcd's limit, and a tenth of etcd's interval: a sled batch of 100 ms
    /// of writes held the applier for ~10 ms (p99 of puts 2.4 x worse),
    /// 10 ms of writes keep most of the gain (docs/benchmark-history.md). Writing
    /// the batch elsewhere would not help: sled's `apply_batch` holds its
    /// process-wide concurrency lock, which stops every sled read (the
    /// applier's included) until the batch is in.
    fn default() -> Self {
        BatchLimits { interval: Duration::from_millis(10), ops: 10_000 }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// Most key-values to return; 0 means no limit.
    pub limit: usize,
    /// Revision to read at; 0 or less means the current one.
    pub rev: i64,
    pub count_only: bool,
}

#[derive(Debug, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range, ignoring the limit.
    pub count: usize,
    /// The store revision the read ran against (the current one).
    pub rev: i64,
}

/// A stretch of the store's history (see `Store::history`).
#[derive(Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    /// The first revision not read: where the next read starts.
    pub next: i64,
    /// The store's revision when it was read.
    pub current: i64,
}

struct State {
    index: KeyIndex,
    leases: LeaseTable,
    current_rev: i64,
    compact_rev: i64,
    consistent_index: u64,
    consistent_term: u64,
    backlog: Backlog,
    /// Revision records of the last backlog handed to sled, readable here
    /// until the next batch starts (sled may still be writing them).
    writing: HashMap<Revision, Record>,
}

/// A revision record as stored.
struct Record {
    tombstone: bool,
    kv: KeyValue,
}

/// Applied changes not yet in sled.
#[derive(Default)]
struct Backlog {
    batch: sled::Batch,
    /// The revision records in `batch`, for reads.
    records: HashMap<Revision, Record>,
    /// How `batch` changes the revision records sled holds.
    digest: Digest,
    ops: usize,
    bytes: usize,
    since: Option<Instant>,
}

impl Backlog {
    fn insert(&mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
        self.count(k.as_ref().len() + v.as_ref().len());
        self.batch.insert(k.as_ref(), v.as_ref());
    }

    /// A new revision record (never one sled already holds).
    fn insert_record(&mut self, rev: Revision, v: impl AsRef<[u8]>) {
        self.insert(rev_key(rev), v);
        self.digest.add(rev);
    }

    /// Takes back a revision record inserted into this backlog.
    fn remove_record(&mut self, rev: Revision) {
        self.remove(rev_key(rev));
        self.digest.remove(rev);
    }

    fn remove(&mut self, k: impl AsRef<[u8]>) {
        self.count(k.as_ref().len());
        self.batch.remove(k.as_ref());
    }

    fn count(&mut self, bytes: usize) {
        self.ops += 1;
        self.bytes += bytes;
        self.since.get_or_insert_with(Instant::now);
    }

    fn due(&self, limits: &BatchLimits) -> bool {
        self.ops >= limits.ops
            || self.bytes >= BACKLOG_MAX_BYTES
            || self.since.is_some_and(|t| t.elapsed() >= limits.interval)
    }
}

pub struct Store {
    pub(super) path: PathBuf,
    /// Swapped for a compact copy by `defragment`. Lock order everywhere:
    /// `state`, then `writing_out`, then `history_pin`, then `db`.
    pub(super) db: RwLock<Backend>,
    state: RwLock<State>,
    /// Held while a backlog goes to sled, so that batches land in order and
    /// a forced write-out waits for one under way.
    writing_out: Mutex<()>,
    limits: BatchLimits,
    /// A group of entries failed part way: memory no longer matches any
    /// raft index, so nothing more may reach sled (the node stops, and the
    /// WAL replays from sled's last consistent state).
    poisoned: AtomicBool,
    /// Held (shared) while a snapshot copies revision records; a write-out
    /// deletes compacted ones only when it can take it exclusively, else it
    /// leaves them in `deferred` for a later one (never waiting for a
    /// snapshot with every reader and writer held up).
    pub(super) history_pin: RwLock<()>,
    deferred: Mutex<Vec<[u8; 17]>>,
    /// While a defragmentation copies the backend: revision records that
    /// compaction deleted meanwhile, to delete from the copy too.
    pub(super) compaction_log: Mutex<Option<Vec<[u8; 17]>>>,
    /// One defragmentation at a time.
    pub(super) defrag_lock: Mutex<()>,
    /// `KeyIndex::held_bytes` as of the last commit, for the quota check
    /// on every write without the state lock.
    held: AtomicU64,
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
        if let Err(e) = self.swap(fresh_path) {
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

    /// Sets when applied changes go to sled.
    pub fn with_batch_limits(mut self, limits: BatchLimits) -> Store {
        self.limits = limits;
        self
    }

    /// A consistent read view; writes wait until it is dropped.
    pub fn read(&self) -> ReadTxn<'_> {
        let state = self.state.read();
        ReadTxn { state, db: self.db.read() }
    }

    /// Starts applying one group of committed raft entries.
    pub fn write(&self) -> WriteBatch<'_> {
        let mut state = self.state.write();
        // Free the last write-out's records once sled surely has them.
        if !state.writing.is_empty() && self.writing_out.try_lock().is_some() {
            state.writing.clear();
        }
        WriteBatch { state, store: self, dropped: Vec::new(), events: Vec::new(), committed: false }
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

/// Reads that both a read view and a write txn (seeing its own writes) serve.
pub trait KvRead {
    fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult>;
}

pub struct ReadTxn<'a> {
    state: RwLockReadGuard<'a, State>,
    db: RwLockReadGuard<'a, Backend>,
}

impl ReadTxn<'_> {
    pub fn rev(&self) -> i64 {
        self.state.current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.state.compact_rev
    }
}

impl KvRead for ReadTxn<'_> {
    fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult> {
        range_at(&self.state, range, opts, self.state.current_rev, |rev| self.state.fetch(&self.db, rev))
    }
}

pub struct WriteBatch<'a> {
    state: RwLockWriteGuard<'a, State>,
    store: &'a Store,
    /// Revision records this batch's compaction drops.
    dropped: Vec<[u8; 17]>,
    /// Every change in revision order, for watchers once the batch commits.
    events: Vec<Event>,
    committed: bool,
}

impl<'a> WriteBatch<'a> {
    /// Whether the entry at `index` is already in the store (replayed WAL).
    pub fn already_applied(&self, index: u64) -> bool {
        index <= self.state.consistent_index
    }

    pub fn current_rev(&self) -> i64 {
        self.state.current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.state.compact_rev
    }

    /// Begins the changes of one request, all under one new revision.
    pub fn txn(&mut self) -> TxnWrite<'_, 'a> {
        let begin_rev = self.state.current_rev;
        let events_before = self.events.len();
        TxnWrite { batch: self, begin_rev, sub: 0, written: Vec::new(), attachments: Vec::new(), events_before }
    }

    /// Compacts history below `rev`: reads before it fail from now on.
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        if rev <= self.state.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.state.current_rev {
            return Err(MvccError::FutureRev);
        }
        for dropped in self.state.index.compact(rev) {
            self.state.backlog.records.remove(&dropped);
            self.state.writing.remove(&dropped);
            self.dropped.push(rev_key(dropped));
        }
        self.state.compact_rev = rev;
        Ok(())
    }

    pub fn lease(&self, id: i64) -> Option<LeaseRecord> {
        self.state.leases.get(id)
    }

    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.state.leases.keys(id)
    }

    pub fn put_lease(&mut self, id: i64, r: LeaseRecord) {
        let (k, v) = self.state.leases.put(id, r);
        self.state.backlog.insert(k, v);
    }

    /// Drops a lease (its keys must be deleted first; any attachment left is dropped too).
    pub fn remove_lease(&mut self, id: i64) {
        for key in self.state.leases.keys(id) {
            let k = self.state.leases.set_attached(id, &key, false);
            self.state.backlog.remove(k);
        }
        let k = self.state.leases.remove(id);
        self.state.backlog.remove(k);
    }

    pub fn set_meta(&mut self, name: &str, value: &[u8]) {
        self.state.backlog.insert(meta_key(name), value);
    }

    /// Ends the group, recording that raft entries up to `index` (of
    /// `term`) are applied; the record goes to sled in the same atomic batch
    /// as the changes (see `Store::write_out_if_due`). Returns the group's
    /// changes as watch events, in revision order.
    pub fn commit(mut self, index: u64, term: u64) -> Vec<Event> {
        let state = &mut *self.state;
        if index > state.consistent_index {
            state.consistent_index = index;
            state.consistent_term = term;
        }
        let applied = state.encode_applied();
        state.backlog.insert(META_APPLIED_KEY, applied);
        self.store.held.store(state.index.held_bytes(), Ordering::Release);
        if !self.dropped.is_empty() {
            state.backlog.count(0);
            self.store.deferred.lock().append(&mut self.dropped);
        }
        self.committed = true;
        std::mem::take(&mut self.events)
    }

    fn fetch(&self, rev: Revision) -> Result<KeyValue> {
        self.state.fetch(&self.store.db.read(), rev)
    }
}

impl Drop for WriteBatch<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.store.poisoned.store(true, Ordering::Release);
            self.state.backlog = Backlog::default();
            tracing::error!("a group of raft entries failed to apply part way; the backend takes no more writes");
        }
    }
}

/// The changes of one request; they all share revision `begin_rev + 1`.
pub struct TxnWrite<'b, 'a> {
    batch: &'b mut WriteBatch<'a>,
    begin_rev: i64,
    sub: i64,
    /// What this txn wrote, so a failed request can take it all back.
    written: Vec<(Vec<u8>, Revision)>,
    /// Lease attachments this txn changed: (lease, key, attached).
    attachments: Vec<(i64, Vec<u8>, bool)>,
    events_before: usize,
}

impl TxnWrite<'_, '_> {
    /// The revision reads in this txn see: the new one once it wrote.
    pub fn rev(&self) -> i64 {
        if self.sub > 0 {
            self.begin_rev + 1
        } else {
            self.begin_rev
        }
    }

    pub fn compact_rev(&self) -> i64 {
        self.batch.state.compact_rev
    }

    /// The key's value as this txn sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.batch.state.index.get(key, self.begin_rev + 1) {
            Some(rev) => self.batch.fetch(rev).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `key` is live in this txn; a read of the index only.
    pub fn exists(&self, key: &[u8]) -> bool {
        self.batch.state.index.current(key).is_some()
    }

    /// The lease `key` is attached to, 0 for none.
    pub fn lease_of(&self, key: &[u8]) -> i64 {
        self.batch.state.leases.lease_of(key)
    }

    pub fn lease_exists(&self, id: i64) -> bool {
        self.batch.state.leases.get(id).is_some()
    }

    fn set_attached(&mut self, lease: i64, key: &[u8], attached: bool) {
        let k = self.batch.state.leases.set_attached(lease, key, attached);
        if attached {
            self.batch.state.backlog.insert(k, []);
        } else {
            self.batch.state.backlog.remove(k);
        }
        self.attachments.push((lease, key.to_vec(), attached));
    }

    /// Writes `key` (attached to `lease` unless 0). Reads nothing from the
    /// backend: the key index knows its creation and version, the lease
    /// table its old lease.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) {
        let prev_lease = self.lease_of(key);
        if prev_lease != lease {
            if prev_lease != 0 {
                self.set_attached(prev_lease, key, false);
            }
            if lease != 0 {
                self.set_attached(lease, key, true);
            }
        }
        let rev = self.next_rev();
        let live = self.batch.state.index.put(key, rev, value.len());
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: live.created,
            mod_revision: rev.main,
            version: live.version,
            value,
            lease,
        };
        self.batch.events.push(Event { r#type: EventType::Put as i32, kv: Some(kv.clone()), prev_kv: None });
        self.batch.state.add_record(rev, Record { tombstone: false, kv });
        self.written.push((key.to_vec(), rev));
    }

    /// Deletes every live key in `range`; returns the deleted key-values in
    /// key order.
    pub fn delete_range(&mut self, range: KeyRange<'_>) -> Result<Vec<KeyValue>> {
        let at = self.begin_rev + 1;
        let targets: Vec<(Vec<u8>, Revision)> =
            self.batch.state.index.range(range, at).map(|(k, rev)| (k.to_vec(), rev)).collect();
        let mut deleted = Vec::with_capacity(targets.len());
        for (key, live) in targets {
            let kv = self.batch.fetch(live)?;
            // The lease table is what puts go by too: one source for both.
            let lease = self.lease_of(&key);
            debug_assert_eq!(lease, kv.lease, "the lease table and the stored value disagree");
            if lease != 0 {
                self.set_attached(lease, &key, false);
            }
            deleted.push(kv);
            let rev = self.next_rev();
            let tombstone = KeyValue { key: key.clone(), mod_revision: rev.main, ..Default::default() };
            self.batch.state.index.tombstone(&key, rev);
            self.batch.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tombstone.clone()),
                prev_kv: None,
            });
            self.batch.state.add_record(rev, Record { tombstone: true, kv: tombstone });
            self.written.push((key, rev));
        }
        Ok(deleted)
    }

    /// Takes back every write of this txn: a request that fails part way
    /// leaves nothing behind and uses no revision.
    pub fn rollback(&mut self) {
        for (key, rev) in self.written.drain(..).rev() {
            self.batch.state.index.undo(&key, rev);
            self.batch.state.backlog.records.remove(&rev);
            self.batch.state.backlog.remove_record(rev);
        }
        for (lease, key, attached) in self.attachments.drain(..).rev() {
            let k = self.batch.state.leases.set_attached(lease, &key, !attached);
            if attached {
                self.batch.state.backlog.remove(k);
            } else {
                self.batch.state.backlog.insert(k, []);
            }
        }
        self.batch.events.truncate(self.events_before);
        self.sub = 0;
    }

    fn next_rev(&mut self) -> Revision {
        let rev = Revision::new(self.begin_rev + 1, self.sub);
        self.sub += 1;
        rev
    }
}

impl KvRead for TxnWrite<'_, '_> {
    fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult> {
        range_at(&self.batch.state, range, opts, self.rev(), |rev| self.batch.fetch(rev))
    }
}

impl Drop for TxnWrite<'_, '_> {
    fn drop(&mut self) {
        // The txn's writes become the store's current revision.
        if self.sub > 0 {
            self.batch.state.current_rev = self.begin_rev + 1;
        }
    }
}

fn range_at(
    state: &State,
    range: KeyRange<'_>,
    opts: RangeOptions,
    current: i64,
    fetch: impl Fn(Revision) -> Result<KeyValue>,
) -> Result<RangeResult> {
    if opts.rev > current {
        return Err(MvccError::FutureRev);
    }
    let at = if opts.rev <= 0 { current } else { opts.rev };
    if at < state.compact_rev {
        return Err(MvccError::Compacted);
    }
    let mut result = RangeResult { rev: current, ..Default::default() };
    for (_, rev) in state.index.range(range, at) {
        result.count += 1;
        if !opts.count_only && (opts.limit == 0 || result.kvs.len() < opts.limit) {
            result.kvs.push(fetch(rev)?);
        }
    }
    Ok(result)
}

fn fetch(db: &Backend, rev: Revision) -> Result<KeyValue> {
    db.with_record(rev, |v| Ok(decode_value(v)?.1))?
        .ok_or_else(|| MvccError::Corrupt(format!("missing value for revision {rev:?}")))
}

impl State {
    /// A revision record, from memory if sled may not have it yet.
    fn fetch(&self, db: &Backend, rev: Revision) -> Result<KeyValue> {
        match self.backlog.records.get(&rev).or_else(|| self.writing.get(&rev)) {
            Some(r) => Ok(r.kv.clone()),
            None => fetch(db, rev),
        }
    }

    /// Re-enters a stored revision record into the key index (start-up).
    fn restore_record(&mut self, rev: Revision, v: &[u8]) -> Result<()> {
        let f = decode_index_fields(v)?;
        if f.tombstone {
            self.index.tombstone(&f.key, rev);
        } else if f.version > 0 {
            self.index.restore(&f.key, rev, f.created, f.version, f.value_len);
        } else {
            return Err(MvccError::Corrupt(format!("revision {rev:?} stores a put of version {}", f.version)));
        }
        // A revision can only be higher than the stored one if the meta
        // was lost; never let revisions go backwards.
        self.current_rev = self.current_rev.max(rev.main);
        Ok(())
    }

    fn add_record(&mut self, rev: Revision, r: Record) {
        let kind = if r.tombstone { KIND_TOMBSTONE } else { KIND_PUT };
        self.backlog.insert_record(rev, encode_value(kind, &r.kv));
        self.backlog.records.insert(rev, r);
    }

    fn encode_applied(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let fields = [self.consistent_index as i64, self.consistent_term as i64, self.current_rev, self.compact_rev];
        for (chunk, v) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn decode_applied(&mut self, v: &[u8]) -> Result<()> {
        if v.len() != 32 {
            return Err(MvccError::Corrupt(format!("applied record of {} bytes", v.len())));
        }
        let mut fields = [0i64; 4];
        for (f, chunk) in fields.iter_mut().zip(v.chunks_exact(8)) {
            let mut be = [0u8; 8];
            be.copy_from_slice(chunk);
            *f = i64::from_be_bytes(be);
        }
        let [index, term, current, compact] = fields;
        self.consistent_index = index as u64;
        self.consistent_term = term as u64;
        self.current_rev = current;
        self.compact_rev = compact;
        Ok(())
    }
}

fn encode_value(kind: u8, kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + kv.encoded_len());
    out.push(kind);
    kv.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// What the start-up scan keeps of a stored value: it reads every revision
/// of a large store, so the value itself is neither decoded nor copied.
#[derive(Debug, PartialEq, Eq)]
struct IndexFields<'a> {
    tombstone: bool,
    key: std::borrow::Cow<'a, [u8]>,
    created: i64,
    version: i64,
    value_len: usize,
}

fn decode_index_fields(v: &[u8]) -> Result<IndexFields<'_>> {
    let (&kind, body) = v.split_first().ok_or_else(|| MvccError::Corrupt("empty value".into()))?;
    let tombstone = kind == KIND_TOMBSTONE;
    if let Some((key, created, version, value_len)) = leading_fields(body) {
        return Ok(IndexFields { tombstone, key: std::borrow::Cow::Borrowed(key), created, version, value_len });
    }
    let (tombstone, kv) = decode_value(v)?;
    let value_len = kv.value.len();
    Ok(IndexFields { tombstone, key: kv.key.into(), created: kv.create_revision, version: kv.version, value_len })
}

/// A `KeyValue`'s key, create_revision, version and value length, with the
/// other fields stepped over and the value not decoded. None where the
/// encoding is anything a plain `KeyValue` would not hold (a full decode
/// then decides).
fn leading_fields(mut body: &[u8]) -> Option<(&[u8], i64, i64, usize)> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let (mut key, mut created, mut version, mut value_len) = (&[][..], 0, 0, 0);
    while !body.is_empty() {
        match decode_key(&mut body).ok()? {
            (1, WireType::LengthDelimited) => key = length_delimited(&mut body)?,
            (2, WireType::Varint) => created = decode_varint(&mut body).ok()? as i64,
            (4, WireType::Varint) => version = decode_varint(&mut body).ok()? as i64,
            (5, WireType::LengthDelimited) => value_len = length_delimited(&mut body)?.len(),
            (_, WireType::Varint) => {
                decode_varint(&mut body).ok()?;
            }
            (_, WireType::LengthDelimited) => {
                length_delimited(&mut body)?;
            }
            _ => return None,
        }
    }
    Some((key, created, version, value_len))
}

/// Takes one length-delimited field's bytes off the front of `body`.
fn length_delimited<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(prost::encoding::decode_varint(body).ok()?).ok()?;
    let bytes = body.get(..len)?;
    *body = &body[len..];
    Some(bytes)
}

fn decode_value(v: &[u8]) -> Result<(bool, KeyValue)> {
    let (kind, body) = v.split_first().ok_or_else(|| MvccError::Corrupt("empty value".into()))?;
    let kv = KeyValue::decode(body).map_err(|e| MvccError::Corrupt(e.to_string()))?;
    Ok((*kind == KIND_TOMBSTONE, kv))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn index_field_decoding_matches_full_decoding() {
        for key_len in [1usize, 127, 128, 300, 70_000] {
            let key: Vec<u8> = (0..key_len).map(|i| (i % 251) as u8).collect();
            for (kind, created, version, lease) in
                [(KIND_PUT, 3, 2, 0), (KIND_PUT, 1 << 40, 1, 9), (KIND_TOMBSTONE, 0, 0, 0)]
            {
                let kv = KeyValue {
                    key: key.clone(),
                    create_revision: created,
                    mod_revision: 1 << 41,
                    version,
                    value: vec![1; 300],
                    lease,
                };
                let v = encode_value(kind, &kv);
                let want = IndexFields {
                    tombstone: kind == KIND_TOMBSTONE,
                    key: key.as_slice().into(),
                    created,
                    version,
                    value_len: kv.value.len(),
                };
                assert_eq!(decode_index_fields(&v).unwrap(), want);
                assert!(leading_fields(&v[1..]).is_some(), "read without a full decode");
            }
        }
        // Fields out of number order or repeated: the last one counts, as in prost.
        let body = [0x0a, 0x01, b'k', 0x10, 0x05, 0x20, 0x03, 0x2a, 0x01, b'x', 0x20, 0x07];
        let full = KeyValue::decode(&body[..]).unwrap();
        assert_eq!(leading_fields(&body), Some((&b"k"[..], full.create_revision, full.version, 1)));
        assert_eq!(full.version, 7);
        assert!(decode_index_fields(&[]).is_err(), "an empty value is corrupt");
        assert!(decode_index_fields(&[KIND_PUT, 0x0a, 0x05, b'a']).is_err(), "a truncated key is corrupt");
    }
}

#[cfg(test)]
mod damage_tests {
    use std::fs;

    use super::*;

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
