//! The backend's files: sled (one tree, so one `apply_batch` covers
//! everything) and the base a defragmentation wrote, under `member/db`; the
//! layout of sled's records; opening (sled's panics on damage become errors),
//! settling the directories of an interrupted defragmentation, and waiting
//! for sled's file lock.
//!
//! Sled layout:
//! `k` + revision (16 bytes BE) -> kind byte (0 put, 1 tombstone) + KeyValue
//! `m` + name                   -> meta value
//! `m` + "applied"              -> consistent index, its term, current and
//!                                 compact revision: one record, because every
//!                                 key a sled batch touches costs a log write

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::base::Base;
use super::digest::{Digest, DIGEST_KEY};
use super::error::{MvccError, Result};
use super::record::decode_value;
use super::revision::Revision;
use crate::proto::mvccpb::KeyValue;

pub(super) const KEY_PREFIX: u8 = b'k';
const META_PREFIX: u8 = b'm';

/// sled's page cache. Its default (1 GiB) fills up with a large store and
/// dominates the memory footprint; recent revisions stay hot anyway, and the
/// OS page cache serves the rest.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long opening waits for the database's lock to be released.
const OPEN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// The applied-state record: `m` + "applied".
pub(super) const META_APPLIED_KEY: &[u8] = b"mapplied";

/// Opens the sled database at `path` with ferrocd's settings.
pub(super) fn open_sled(path: &Path) -> Result<sled::Db> {
    // The same process may have just closed it: sled's threads release the
    // file lock a moment after the last handle goes.
    wait_unlocked(path, OPEN_LOCK_WAIT)?;
    // No periodic background flush: the WAL is the durability, and the
    // node flushes explicitly before a snapshot lets the WAL be purged.
    let config = sled::Config::new().path(path).cache_capacity(CACHE_BYTES).flush_every_ms(None);
    // sled panics on some damage it meets while recovering ("tried to
    // serialize Uninitialized"): that is a damaged backend, not a crash.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
        Ok(db) => Ok(db?),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(MvccError::Corrupt(format!("sled failed while recovering it: {what}")))
        }
    }
}

/// The backend's files: sled, and the base the last defragmentation wrote
/// (revision records up to its cut; newer ones are in sled).
pub(super) struct Backend {
    pub(super) sled: sled::Db,
    pub(super) base: Base,
    /// Which revision records `sled` holds, as its digest record says;
    /// changed only by the batch that writes the record (`Store::apply_to_sled`).
    pub(super) digest: Mutex<Digest>,
}

impl std::ops::Deref for Backend {
    type Target = sled::Db;

    fn deref(&self) -> &sled::Db {
        &self.sled
    }
}

impl Backend {
    /// The key-value stored at revision `rev`, which must exist.
    pub(super) fn fetch(&self, rev: Revision) -> Result<KeyValue> {
        self.with_record(rev, |v| Ok(decode_value(v)?.1))?
            .ok_or_else(|| MvccError::Corrupt(format!("missing value for revision {rev:?}")))
    }

    pub(super) fn new(sled: sled::Db, base: Base, digest: Digest) -> Backend {
        Backend { sled, base, digest: Mutex::new(digest) }
    }

    /// A throwaway database holding the place of one that is being swapped.
    pub(super) fn placeholder() -> Result<Backend> {
        Ok(Backend::new(sled::Config::new().temporary(true).open()?, Base::default(), Digest::default()))
    }

    /// Runs `f` on the stored bytes of revision `rev`, wherever they are.
    pub(super) fn with_record<T>(&self, rev: Revision, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<Option<T>> {
        if self.base.covers(rev) {
            return self.base.get(rev)?.map(|v| f(&v)).transpose();
        }
        self.sled.get(rev_key(rev))?.map(|v| f(&v)).transpose()
    }

    /// The revision records from `from` up to (not including) `to` that
    /// compaction has not deleted, in revision order: the base's, then
    /// sled's.
    pub(super) fn records(
        &self,
        from: Revision,
        to: Revision,
    ) -> impl Iterator<Item = Result<(Revision, Vec<u8>)>> + '_ {
        let base_end = Revision::new(self.base.cut() + 1, 0);
        let in_sled = from.max(base_end).min(to.max(base_end));
        self.base.range(from, to.min(base_end)).chain(self.sled.range(rev_key(in_sled)..rev_key(to.max(in_sled))).map(
            |item| {
                let (k, v) = item?;
                Ok((revision_of(&k)?, v.to_vec()))
            },
        ))
    }

    /// Bytes on disk: sled's files and the base.
    pub(super) fn size(&self) -> u64 {
        self.sled.size_on_disk().unwrap_or(0) + self.base.size()
    }
}

pub(super) fn revision_of(key: &[u8]) -> Result<Revision> {
    key.get(1..).and_then(Revision::from_bytes).ok_or_else(|| MvccError::Corrupt(format!("bad revision key {key:?}")))
}

/// Every record but the revision records and their digest (which describes
/// this database's share of them): meta, leases, attachments.
pub(super) fn mutable_records(db: &sled::Db) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + '_ {
    db.range(..[KEY_PREFIX].as_slice())
        .chain(db.range([KEY_PREFIX + 1].as_slice()..))
        .filter(|item| !matches!(item, Ok((k, _)) if k.as_ref() == DIGEST_KEY))
}

pub(super) fn rev_key(rev: Revision) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = KEY_PREFIX;
    k[1..].copy_from_slice(&rev.to_bytes());
    k
}

pub(super) fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(name.as_bytes());
    k
}

/// Moves the closed database at `path` aside (`.old`) and the closed fresh
/// one at `fresh_path` into its place (`settle_dirs` finishes a swap a
/// crash interrupted).
pub(super) fn swap_in(path: &Path, fresh_path: &Path) -> Result<()> {
    wait_closed(path)?;
    let old_path = side(path, "old");
    std::fs::rename(path, &old_path).map_err(io("renaming", path))?;
    std::fs::rename(fresh_path, path).map_err(io("renaming", fresh_path))?;
    sync_dir(path)
}

pub(super) fn side(path: &Path, ext: &str) -> PathBuf {
    path.with_extension(ext)
}

pub(super) fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MvccError + 'a {
    move |e| MvccError::Corrupt(format!("{what} {}: {e}", path.display()))
}

/// Finishes or undoes a defragmentation a crash interrupted.
pub(super) fn settle_dirs(path: &Path) -> Result<()> {
    let (fresh, old) = (side(path, "defrag"), side(path, "old"));
    if !path.exists() {
        // Crashed between the two renames: the fresh copy is complete (it
        // was flushed and closed before the old one moved). Failing that,
        // the old one goes back.
        let back = if fresh.exists() { &fresh } else { &old };
        if back.exists() {
            std::fs::rename(back, path).map_err(io("renaming", back))?;
            sync_dir(path)?;
        }
    }
    clear_side_dirs(path).map(|_| ())
}

/// Removes what a copy beside the backend at `path` (a defragmentation or
/// a snapshot install) left unfinished; returns where a new copy goes.
pub(super) fn clear_side_dirs(path: &Path) -> Result<PathBuf> {
    let fresh = side(path, "defrag");
    for leftover in [&fresh, &side(path, "old")] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(io("removing", leftover))?;
        }
    }
    Ok(fresh)
}

/// Makes renames in the directory holding `path` durable.
pub(super) fn sync_dir(path: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io("syncing", parent))
}

/// How long a dropped database may take to close (its I/O threads finish
/// their last jobs, then release the file lock).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until no sled instance holds the database at `path` (sled keeps
/// an exclusive lock on its file while open; its last handle can be in one
/// of sled's own threads for a moment after ours is dropped).
pub(super) fn wait_closed(path: &Path) -> Result<()> {
    wait_unlocked(path, CLOSE_TIMEOUT)
}

/// Waits up to `timeout` until nothing holds sled's lock on the database
/// at `path` (there is nothing to wait for if it does not exist).
pub(super) fn wait_unlocked(path: &Path, timeout: std::time::Duration) -> Result<()> {
    let file = path.join("db");
    let started = std::time::Instant::now();
    loop {
        let f = match std::fs::File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("opening", &file)(e)),
        };
        match f.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < timeout => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(MvccError::Corrupt(format!("the old backend did not close: {e}"))),
        }
    }
}
