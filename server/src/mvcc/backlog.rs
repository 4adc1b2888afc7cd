//! Applied changes waiting in memory to go to sled in one atomic batch, and
//! when they are due (etcd's `--backend-batch-interval` and
//! `--backend-batch-limit`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::backend::rev_key;
use super::digest::Digest;
use super::record::Record;
use super::revision::Revision;

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

/// Applied changes not yet in sled.
#[derive(Default)]
pub(super) struct Backlog {
    pub(super) batch: sled::Batch,
    /// The revision records in `batch`, for reads.
    pub(super) records: HashMap<Revision, Record>,
    /// How `batch` changes the revision records sled holds.
    pub(super) digest: Digest,
    ops: usize,
    bytes: usize,
    since: Option<Instant>,
}

impl Backlog {
    pub(super) fn insert(&mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
        self.count(k.as_ref().len() + v.as_ref().len());
        self.batch.insert(k.as_ref(), v.as_ref());
    }

    /// A new revision record (never one sled already holds).
    pub(super) fn insert_record(&mut self, rev: Revision, v: impl AsRef<[u8]>) {
        self.insert(rev_key(rev), v);
        self.digest.add(rev);
    }

    /// Takes back a revision record inserted into this backlog.
    pub(super) fn remove_record(&mut self, rev: Revision) {
        self.remove(rev_key(rev));
        self.digest.remove(rev);
    }

    pub(super) fn remove(&mut self, k: impl AsRef<[u8]>) {
        self.count(k.as_ref().len());
        self.batch.remove(k.as_ref());
    }

    pub(super) fn count(&mut self, bytes: usize) {
        self.ops += 1;
        self.bytes += bytes;
        self.since.get_or_insert_with(Instant::now);
    }

    pub(super) fn due(&self, limits: &BatchLimits) -> bool {
        self.ops >= limits.ops
            || self.bytes >= BACKLOG_MAX_BYTES
            || self.since.is_some_and(|t| t.elapsed() >= limits.interval)
    }
}
