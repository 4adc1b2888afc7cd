//! Writes: one group of applied raft entries (`WriteBatch`) and the changes
//! of one request in it (`TxnWrite`), which a failed request takes back whole.

use std::sync::atomic::Ordering;

use parking_lot::RwLockWriteGuard;

use super::backend::{meta_key, rev_key, META_APPLIED_KEY};
use super::backlog::Backlog;
use super::error::{MvccError, Result};
use super::key_index::KeyRange;
use super::leases::LeaseRecord;
use super::read::{range_at, KvRead, RangeOptions, RangeResult};
use super::record::Record;
use super::revision::Revision;
use super::state::State;
use super::store::Store;
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

pub struct WriteBatch<'a> {
    pub(super) state: RwLockWriteGuard<'a, State>,
    pub(super) store: &'a Store,
    /// Revision records this batch's compaction drops.
    pub(super) dropped: Vec<[u8; 17]>,
    /// Every change in revision order, for watchers once the batch commits.
    pub(super) events: Vec<Event>,
    pub(super) committed: bool,
}

impl Store {
    /// Starts applying one group of committed raft entries.
    pub fn write(&self) -> WriteBatch<'_> {
        let mut state = self.state.write();
        // Free the last write-out's records once sled surely has them.
        if !state.writing.is_empty() && self.writing_out_idle() {
            state.writing.clear();
        }
        WriteBatch { state, store: self, dropped: Vec::new(), events: Vec::new(), committed: false }
    }
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
