//! What the store holds in memory: the key index, the lease table, the
//! revisions and applied index, and the applied changes not yet in sled.

use std::collections::HashMap;

use super::backend::Backend;
use super::backlog::Backlog;
use super::error::{MvccError, Result};
use super::key_index::KeyIndex;
use super::leases::LeaseTable;
use super::record::{decode_index_fields, encode_value, Record, KIND_PUT, KIND_TOMBSTONE};
use super::revision::Revision;
use crate::proto::mvccpb::KeyValue;

pub(super) struct State {
    pub(super) index: KeyIndex,
    pub(super) leases: LeaseTable,
    pub(super) current_rev: i64,
    pub(super) compact_rev: i64,
    pub(super) consistent_index: u64,
    pub(super) consistent_term: u64,
    pub(super) backlog: Backlog,
    /// Revision records of the last backlog handed to sled, readable here
    /// until the next batch starts (sled may still be writing them).
    pub(super) writing: HashMap<Revision, Record>,
}

impl State {
    /// A revision record, from memory if sled may not have it yet.
    pub(super) fn fetch(&self, db: &Backend, rev: Revision) -> Result<KeyValue> {
        match self.backlog.records.get(&rev).or_else(|| self.writing.get(&rev)) {
            Some(r) => Ok(r.kv.clone()),
            None => db.fetch(rev),
        }
    }

    /// Re-enters a stored revision record into the key index (start-up).
    pub(super) fn restore_record(&mut self, rev: Revision, v: &[u8]) -> Result<()> {
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

    pub(super) fn add_record(&mut self, rev: Revision, r: Record) {
        let kind = if r.tombstone { KIND_TOMBSTONE } else { KIND_PUT };
        self.backlog.insert_record(rev, encode_value(kind, &r.kv));
        self.backlog.records.insert(rev, r);
    }

    pub(super) fn encode_applied(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let fields = [self.consistent_index as i64, self.consistent_term as i64, self.current_rev, self.compact_rev];
        for (chunk, v) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    pub(super) fn decode_applied(&mut self, v: &[u8]) -> Result<()> {
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
