//! Leases as the backend keeps them: each lease's granted TTL and its last
//! checkpointed remaining TTL, and the keys attached to it. They change only
//! inside apply batches, together with the keys, so they always agree.
//!
//! Sled layout: `l` + lease ID (8 bytes BE) -> TTL + remaining TTL (i64 BE each);
//! `a` + lease ID + key -> empty (the key is attached to the lease).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::error::{MvccError, Result};

const LEASE_PREFIX: u8 = b'l';
const ATTACH_PREFIX: u8 = b'a';

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    pub ttl: i64,
    /// Remaining TTL at the last checkpoint; 0 means the whole TTL.
    pub remaining_ttl: i64,
}

#[derive(Debug, Default)]
pub(super) struct LeaseTable {
    records: BTreeMap<i64, LeaseRecord>,
    keys: HashMap<i64, BTreeSet<Vec<u8>>>,
    /// The other way round, so a put learns a key's old lease without
    /// reading its value; only attached keys are here.
    lease_of: HashMap<Box<[u8]>, i64>,
}

impl LeaseTable {
    pub(super) fn load(db: &sled::Db) -> Result<LeaseTable> {
        let mut t = LeaseTable::default();
        for item in db.scan_prefix([LEASE_PREFIX]) {
            let (k, v) = item?;
            let id = id_at(&k, 1).ok_or_else(|| MvccError::Corrupt(format!("bad lease key {k:?}")))?;
            let (ttl, remaining_ttl) = match (id_at(&v, 0), id_at(&v, 8)) {
                (Some(ttl), Some(rem)) => (ttl, rem),
                _ => return Err(MvccError::Corrupt(format!("bad lease record for {id}"))),
            };
            t.records.insert(id, LeaseRecord { ttl, remaining_ttl });
        }
        for item in db.scan_prefix([ATTACH_PREFIX]) {
            let (k, _) = item?;
            let id = id_at(&k, 1).ok_or_else(|| MvccError::Corrupt(format!("bad lease attachment {k:?}")))?;
            t.attach(id, &k[9..]);
        }
        Ok(t)
    }

    pub(super) fn get(&self, id: i64) -> Option<LeaseRecord> {
        self.records.get(&id).copied()
    }

    pub(super) fn all(&self) -> Vec<(i64, LeaseRecord)> {
        self.records.iter().map(|(id, r)| (*id, *r)).collect()
    }

    fn attach(&mut self, id: i64, key: &[u8]) {
        self.keys.entry(id).or_default().insert(key.to_vec());
        self.lease_of.insert(key.into(), id);
    }

    pub(super) fn lease_of(&self, key: &[u8]) -> i64 {
        self.lease_of.get(key).copied().unwrap_or(0)
    }

    pub(super) fn keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.keys.get(&id).map(|k| k.iter().cloned().collect()).unwrap_or_default()
    }

    /// Sets a record; returns the backend write.
    pub(super) fn put(&mut self, id: i64, r: LeaseRecord) -> (Vec<u8>, Vec<u8>) {
        self.records.insert(id, r);
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&r.ttl.to_be_bytes());
        v.extend_from_slice(&r.remaining_ttl.to_be_bytes());
        (record_key(id).to_vec(), v)
    }

    /// Drops a record; returns the backend key to remove.
    pub(super) fn remove(&mut self, id: i64) -> Vec<u8> {
        self.records.remove(&id);
        record_key(id).to_vec()
    }

    /// Attaches or detaches `key`; returns the backend key of the attachment.
    pub(super) fn set_attached(&mut self, id: i64, key: &[u8], attached: bool) -> Vec<u8> {
        if attached {
            self.attach(id, key);
        } else if let Some(set) = self.keys.get_mut(&id) {
            if set.remove(key) {
                self.lease_of.remove(key);
            }
            if set.is_empty() {
                self.keys.remove(&id);
            }
        }
        let mut k = Vec::with_capacity(9 + key.len());
        k.push(ATTACH_PREFIX);
        k.extend_from_slice(&id.to_be_bytes());
        k.extend_from_slice(key);
        k
    }
}

fn record_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LEASE_PREFIX;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn id_at(b: &[u8], at: usize) -> Option<i64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}
