//! Reads: a consistent view of the store, and the range rules a view and a
//! write txn (which sees its own writes) share.

use parking_lot::RwLockReadGuard;

use super::backend::Backend;
use super::error::{MvccError, Result};
use super::key_index::KeyRange;
use super::revision::Revision;
use super::state::State;
use super::store::Store;
use crate::proto::mvccpb::KeyValue;

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

/// Reads that both a read view and a write txn (seeing its own writes) serve.
pub trait KvRead {
    fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult>;
}

pub struct ReadTxn<'a> {
    pub(super) state: RwLockReadGuard<'a, State>,
    pub(super) db: RwLockReadGuard<'a, Backend>,
}

impl ReadTxn<'_> {
    pub fn rev(&self) -> i64 {
        self.state.current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.state.compact_rev
    }
}

impl Store {
    /// A consistent read view; writes wait until it is dropped.
    pub fn read(&self) -> ReadTxn<'_> {
        let state = self.state.read();
        ReadTxn { state, db: self.db.read() }
    }
}

impl KvRead for ReadTxn<'_> {
    fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult> {
        range_at(&self.state, range, opts, self.state.current_rev, |rev| self.state.fetch(&self.db, rev))
    }
}

pub(super) fn range_at(
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
