//! Defragmentation: sled reuses freed space but never gives it back to the
//! file system, so after a compaction the backend keeps its size (and a
//! NOSPACE alarm could never be cleared). Defragmenting copies the live
//! records into a fresh database and swaps it in, as etcd rewrites its
//! bbolt file.
//!
//! The copy runs while reads and writes go on: first every revision record
//! up to the current revision, then, with the store held exclusively only
//! briefly, the revisions written meanwhile, the deletions compaction made
//! meanwhile, and the small mutable records. Then the directories are
//! swapped: `db` -> `db.old`, `db.defrag` -> `db`. A crash at any point
//! leaves one complete database, which `settle_dirs` puts back in place.

use std::path::{Path, PathBuf};

use super::revision::Revision;
use super::store::{mutable_records, open_sled, rev_key, MvccError, Result, Store};

/// Records per sled batch while copying.
const COPY_BATCH: usize = 10_000;

fn side(path: &Path, ext: &str) -> PathBuf {
    path.with_extension(ext)
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MvccError + 'a {
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
    for leftover in [fresh, old] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).map_err(io("removing", &leftover))?;
        }
    }
    Ok(())
}

/// Makes renames in the directory holding `path` durable.
fn sync_dir(path: &Path) -> Result<()> {
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

/// Copies `range` of `from` into `to` in bounded batches.
fn copy(from: &sled::Db, to: &sled::Db, range: std::ops::Range<[u8; 17]>) -> Result<u64> {
    let (mut batch, mut n, mut total) = (sled::Batch::default(), 0, 0);
    for item in from.range(range) {
        let (k, v) = item?;
        batch.insert(k, v);
        n += 1;
        if n == COPY_BATCH {
            to.apply_batch(std::mem::take(&mut batch))?;
            total += n as u64;
            n = 0;
        }
    }
    to.apply_batch(batch)?;
    Ok(total + n as u64)
}

/// Stops recording compaction's deletions however the defragmentation ends.
struct LogGuard<'a>(&'a Store);

impl Drop for LogGuard<'_> {
    fn drop(&mut self) {
        *self.0.compaction_log.lock() = None;
    }
}

impl Store {
    /// Rewrites the backend compactly; returns its size before and after.
    pub fn defragment(&self) -> Result<(u64, u64)> {
        let _one_at_a_time = self.defrag_lock.lock();
        let before = self.db_size();
        let fresh_path = side(&self.path, "defrag");
        for leftover in [&fresh_path, &side(&self.path, "old")] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(io("removing", leftover))?;
            }
        }
        *self.compaction_log.lock() = Some(Vec::new());
        let _log = LogGuard(self);
        let fresh = open_sled(&fresh_path)?;
        let start = rev_key(Revision::new(0, 0));
        let copied_up_to = self.written_revision()?;
        let mut records = copy(&self.db.read(), &fresh, start..rev_key(Revision::new(copied_up_to + 1, 0)))?;
        // sled lays a database out anew when it reopens it (often larger):
        // reopen the copy now, so that its size below is the size it will
        // be served at.
        fresh.flush()?;
        drop(fresh);
        wait_closed(&fresh_path)?;
        let fresh = open_sled(&fresh_path)?;

        let swapped = self.exclusive(|current| {
            let _pin = self.history_pin.write();
            let mut db = self.db.write();
            let since = rev_key(Revision::new(copied_up_to + 1, 0))..rev_key(Revision::new(current + 1, 0));
            records += copy(&db, &fresh, since)?;
            let mut batch = sled::Batch::default();
            for key in self.compaction_log.lock().take().unwrap_or_default() {
                batch.remove(key.as_slice());
            }
            for item in mutable_records(&fresh) {
                batch.remove(item?.0);
            }
            for item in mutable_records(&db) {
                let (k, v) = item?;
                batch.insert(k, v);
                records += 1;
            }
            fresh.apply_batch(batch)?;
            fresh.flush()?;
            // sled lays a fresh copy out no tighter than a database it has
            // been cleaning for a while (see docs/benchmarks.md): a copy
            // that is not smaller is dropped, so defragmenting never grows
            // the backend.
            let (copy_size, current_size) = (fresh.size_on_disk()?, db.size_on_disk()?);
            drop(fresh);
            wait_closed(&fresh_path)?;
            if copy_size >= current_size {
                tracing::info!(copy_size, current_size, "the defragmented copy is not smaller; keeping the backend");
                std::fs::remove_dir_all(&fresh_path).map_err(io("removing", &fresh_path))?;
                return Ok(false);
            }
            // Close the old database before its directory moves (sled writes
            // by path when it closes); a throwaway one holds the place.
            let old = std::mem::replace(&mut *db, sled::Config::new().temporary(true).open()?);
            old.flush()?;
            drop(old);
            let swapped = self.swap(&fresh_path);
            // Whatever happened, the store must not stay on the placeholder.
            if let Err(e) = &swapped {
                tracing::error!(error = %e, "defragmentation failed mid-swap; reopening the backend");
                settle_dirs(&self.path)?;
            }
            match open_sled(&self.path) {
                Ok(reopened) => *db = reopened,
                Err(e) => {
                    // Serving from an empty placeholder would lose writes: stop.
                    tracing::error!(error = %e, "cannot reopen the backend after defragmenting; aborting");
                    std::process::abort();
                }
            }
            swapped.map(|()| true)
        })?;
        if swapped {
            let old_path = side(&self.path, "old");
            std::fs::remove_dir_all(&old_path).map_err(io("removing", &old_path))?;
        }
        let after = self.db_size();
        tracing::info!(records, before, after, "defragmented the backend");
        Ok((before, after))
    }

    /// Moves the closed old database aside and the fresh one into place.
    fn swap(&self, fresh_path: &Path) -> Result<()> {
        wait_closed(&self.path)?;
        let old_path = side(&self.path, "old");
        std::fs::rename(&self.path, &old_path).map_err(io("renaming", &self.path))?;
        std::fs::rename(fresh_path, &self.path).map_err(io("renaming", fresh_path))?;
        sync_dir(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{BatchLimits, KeyRange, KvRead, RangeOptions};

    #[test]
    fn defragmenting_shrinks_the_backend_and_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // Every group goes to sled, so compaction has records to delete there.
        let store = Store::open(&path).unwrap().with_batch_limits(BatchLimits { ops: 1, ..Default::default() });
        for round in 0..20 {
            let mut b = store.write();
            for k in 0..200 {
                b.txn().put(format!("k{k}").as_bytes(), vec![round as u8; 1024], 0);
            }
            b.set_meta("alarms", b"x");
            b.commit(round + 1, 1);
            store.write_out_if_due().unwrap();
        }
        let rev = store.current_rev();
        let mut b = store.write();
        b.compact(rev).unwrap();
        b.commit(21, 1);
        store.flush().unwrap();
        let (before, after) = store.defragment().unwrap();
        assert!(after * 2 < before, "{before} -> {after}");
        let all = store.read().range(KeyRange::new(b"k", b"l"), RangeOptions::default()).unwrap();
        assert_eq!(all.count, 200);
        assert_eq!(all.kvs[0].value, vec![19u8; 1024]);
        assert_eq!(store.meta("alarms").unwrap().as_deref(), Some(b"x".as_slice()));
        // Writes go on into the new database, and a reopen finds it all.
        let mut b = store.write();
        b.txn().put(b"new", b"1".to_vec(), 0);
        b.commit(22, 1);
        store.flush().unwrap();
        drop(store);
        wait_closed(&path).unwrap();
        assert!(!side(&path, "old").exists() && !side(&path, "defrag").exists());
        let store = Store::open(&path).unwrap();
        assert_eq!(store.current_rev(), rev + 1);
        assert_eq!(store.consistent_index(), 22);
        assert_eq!(store.read().range(KeyRange::new(b"new", b""), RangeOptions::default()).unwrap().count, 1);
    }

    #[test]
    fn defragmenting_never_grows_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap().with_batch_limits(BatchLimits { ops: 1, ..Default::default() });
        // Nothing compacted: the copy holds everything the original does.
        for round in 0..100 {
            let mut b = store.write();
            for k in 0..50 {
                b.txn().put(format!("k{k}").as_bytes(), vec![round as u8; 300], 0);
            }
            b.commit(round + 1, 1);
            store.write_out_if_due().unwrap();
        }
        store.flush().unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p.join("db")).unwrap());
        let original = inode(&path);
        let (before, after) = store.defragment().unwrap();
        // sled's copy is larger than the database it has been cleaning (its
        // own size drifts a little as it writes pages out, swapped or not).
        assert_eq!(inode(&path), original, "a larger copy was swapped in: {before} -> {after}");
        assert!(!side(&path, "defrag").exists(), "a copy left behind");
        let all = store.read().range(KeyRange::new(b"k", b"l"), RangeOptions::default()).unwrap();
        assert_eq!((all.count, all.kvs[0].value.clone()), (50, vec![99u8; 300]));
    }

    #[test]
    fn an_interrupted_swap_is_settled_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            let mut b = store.write();
            b.txn().put(b"a", b"1".to_vec(), 0);
            b.commit(1, 1);
            store.flush().unwrap();
        }
        wait_closed(&path).unwrap();
        // A crash between the renames: only db.defrag (complete) and db.old.
        std::fs::rename(&path, side(&path, "defrag")).unwrap();
        std::fs::create_dir(side(&path, "old")).unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.current_rev(), 2);
        assert!(!side(&path, "old").exists() && !side(&path, "defrag").exists());
        // A crash right after the old one moved aside: it comes back.
        drop(store);
        wait_closed(&path).unwrap();
        std::fs::rename(&path, side(&path, "old")).unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.current_rev(), 2);
    }
}
