//! Defragmentation: sled reuses freed space but never gives it back to the
//! file system, so after a compaction the backend keeps its size, and sled
//! cannot load a copy compactly either (2.5 to 4 times its bytes). So the
//! revision records go into a new base (`mvcc::base`), written once in
//! revision order, and a fresh sled beside it takes the rest; the two swap
//! in together, as etcd rewrites its bbolt file.
//!
//! The base is written while reads and writes go on, from every revision
//! record up to the current revision; then, with the store held exclusively
//! only briefly, the revisions written meanwhile go into the fresh sled, the
//! deletions compaction made meanwhile are applied (marked dead in the new
//! base), and the small mutable records are copied. Then the directories
//! are swapped: `db` -> `db.old`, `db.defrag` -> `db`. A crash at any point
//! leaves one complete database, which `settle_dirs` puts back in place.

use super::backend::{
    clear_side_dirs, io, mutable_records, open_sled, rev_key, revision_of, side, swap_in, sync_dir, wait_closed,
    Backend,
};
use super::base::{self, Base};
use super::digest::{Digest, DIGEST_KEY};
use super::error::Result;
use super::revision::Revision;
use super::store::Store;

/// Records per sled batch while copying.
const COPY_BATCH: usize = 10_000;

/// Copies revision records into `to` in bounded batches, adding them to
/// `digest`.
fn copy(records: impl Iterator<Item = Result<(Revision, Vec<u8>)>>, to: &sled::Db, digest: &mut Digest) -> Result<u64> {
    let (mut batch, mut n, mut total) = (sled::Batch::default(), 0, 0);
    for item in records {
        let (rev, v) = item?;
        batch.insert(rev_key(rev).as_slice(), v);
        digest.add(rev);
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
    /// The revision records up to now go into a new base, once each, in
    /// order (reads and writes go on meanwhile); then, holding the store
    /// briefly, the records written since and the small mutable records go
    /// into a fresh sled beside it, and the two replace the backend.
    pub fn defragment(&self) -> Result<(u64, u64)> {
        let _one_at_a_time = self.defrag_lock.lock();
        let before = self.db_size();
        let fresh_path = clear_side_dirs(&self.path)?;
        *self.compaction_log.lock() = Some(Vec::new());
        let _log = LogGuard(self);
        std::fs::create_dir_all(&fresh_path).map_err(io("creating", &fresh_path))?;
        let cut = self.written_revision()?;
        let base_path = fresh_path.join(base::FILE);
        let new_base = {
            let db = self.db.read();
            Base::write(&base_path, cut, db.records(Revision::new(0, 0), Revision::new(cut + 1, 0)))?
        };
        sync_dir(&base_path)?;
        let fresh = open_sled(&fresh_path)?;
        let mut records = new_base.len();

        let swapped = self.exclusive(|current| {
            let _pin = self.history_pin.write();
            let mut db = self.db.write();
            let mut digest = Digest::default();
            let since_cut = db.records(Revision::new(cut + 1, 0), Revision::new(current + 1, 0));
            records += copy(since_cut, &fresh, &mut digest)?;
            // Compaction's deletions meanwhile: the base's are marked dead;
            // newer ones were applied to sled before the copy above, so the
            // copy never had them.
            for key in self.compaction_log.lock().take().unwrap_or_default() {
                new_base.mark_dead(revision_of(&key)?);
            }
            let mut batch = sled::Batch::default();
            batch.insert(DIGEST_KEY, &digest.encode());
            for item in mutable_records(&db) {
                let (k, v) = item?;
                batch.insert(k, v);
                records += 1;
            }
            fresh.apply_batch(batch)?;
            fresh.flush()?;
            // Never grow the backend (a store with little history to drop
            // may gain nothing).
            let (copy_size, current_size) = (fresh.size_on_disk()? + new_base.size(), db.size());
            drop(fresh);
            wait_closed(&fresh_path)?;
            if copy_size >= current_size {
                tracing::info!(copy_size, current_size, "the defragmented copy is not smaller; keeping the backend");
                std::fs::remove_dir_all(&fresh_path).map_err(io("removing", &fresh_path))?;
                return Ok(false);
            }
            // Close the old database before its directory moves (sled writes
            // by path when it closes); a throwaway one holds the place.
            let old = std::mem::replace(&mut *db, Backend::placeholder()?);
            old.sled.flush()?;
            drop(old);
            // From here on, serving from the placeholder would lose writes
            // and a half-done swap leaves the base's compacted records
            // unmarked: a failure stops the member, whose restart settles
            // the directories and rebuilds everything from disk.
            let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
                tracing::error!(error = %e, "{what} while defragmenting; aborting");
                std::process::abort();
            };
            if let Err(e) = swap_in(&self.path, &fresh_path) {
                fail("cannot swap the backend in", &e);
            }
            match open_sled(&self.path) {
                Ok(sled) => *db = Backend::new(sled, new_base.moved_to(&self.path.join(base::FILE)), digest),
                Err(e) => fail("cannot reopen the backend", &e),
            }
            Ok(true)
        })?;
        if swapped {
            let old_path = side(&self.path, "old");
            std::fs::remove_dir_all(&old_path).map_err(io("removing", &old_path))?;
        }
        let after = self.db_size();
        tracing::info!(records, before, after, swapped, "defragmented the backend");
        Ok((before, after))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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

    /// A store with history and no compaction.
    fn store_with_history(path: &Path) -> Store {
        let store = Store::open(path).unwrap().with_batch_limits(BatchLimits { ops: 1, ..Default::default() });
        for round in 0..100 {
            let mut b = store.write();
            for k in 0..50 {
                b.txn().put(format!("k{k}").as_bytes(), vec![round as u8; 300], 0);
            }
            b.commit(round + 1, 1);
            store.write_out_if_due().unwrap();
        }
        store.flush().unwrap();
        store
    }

    #[test]
    fn defragmenting_without_compaction_lays_history_out_compactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = store_with_history(&path);
        let written = 100 * 50 * 300;
        let (before, after) = store.defragment().unwrap();
        // Keys, revisions and framing add a tenth; sled's own files start at
        // about half a MiB whatever they hold.
        let sled_floor = 1 << 20;
        assert!(
            after < before && after < written * 13 / 10 + sled_floor,
            "{before} -> {after} for {written} B of values"
        );
        assert!(!side(&path, "defrag").exists(), "a copy left behind");
        let all = store.read().range(KeyRange::new(b"k", b"l"), RangeOptions::default()).unwrap();
        assert_eq!((all.count, all.kvs[0].value.clone()), (50, vec![99u8; 300]));
        // A second one has nothing to gain: the backend is kept.
        let (before, after) = store.defragment().unwrap();
        assert!(after <= before + 1024 * 1024, "{before} -> {after}");
    }

    /// Old revisions in the base and new ones in sled serve reads, hashes,
    /// history and snapshots exactly as a store never defragmented does,
    /// before and after a compaction and a restart.
    #[test]
    fn a_defragmented_store_serves_as_one_never_defragmented() {
        let dir = tempfile::tempdir().unwrap();
        let (path, twin_path) = (dir.path().join("db"), dir.path().join("twin"));
        let (store, twin) = (store_with_history(&path), store_with_history(&twin_path));
        store.defragment().unwrap();
        let history = |store: &Store, from| -> Vec<(i64, Vec<u8>)> {
            let h = store.history(from, usize::MAX).unwrap();
            h.events.into_iter().map(|e| e.kv.map(|kv| (kv.mod_revision, kv.value)).unwrap_or_default()).collect()
        };
        let image = |store: &Store| {
            let mut out = Vec::new();
            store.snapshot(&mut out).unwrap();
            out
        };
        let at = |store: &Store, rev| {
            let opts = RangeOptions { rev, ..Default::default() };
            store.read().range(KeyRange::new(b"k7", b""), opts).unwrap().kvs[0].value.clone()
        };
        let same = |store: &Store, twin: &Store, when: &str| {
            assert_eq!(store.hash_kv(0).unwrap(), twin.hash_kv(0).unwrap(), "hash {when}");
            let from = store.compact_rev().max(2);
            assert_eq!(history(store, from), history(twin, from), "history {when}");
            assert!(image(store) == image(twin), "snapshot image {when}");
        };
        same(&store, &twin, "after defragmenting");
        // Round r wrote k7 at revision 2 + 50 r + 7.
        assert_eq!(at(&store, 2 + 50 * 38 + 7), vec![38u8; 300], "an old revision, from the base");
        let rev = store.current_rev();
        for (s, index) in [(&store, 101), (&twin, 101)] {
            let mut b = s.write();
            b.txn().put(b"k7", vec![200; 300], 0);
            b.commit(index, 1);
            let mut b = s.write();
            b.compact(rev).unwrap();
            b.commit(index + 1, 1);
            s.write_out_if_due().unwrap();
        }
        same(&store, &twin, "after compacting");
        assert_eq!(at(&store, 0), vec![200u8; 300]);
        store.flush().unwrap();
        drop(store);
        wait_closed(&path).unwrap();
        let store = Store::open(&path).unwrap();
        same(&store, &twin, "after a restart");
        assert_eq!(at(&store, rev), vec![99u8; 300]);
        assert!(store.verify().unwrap() > 0);
        // A second defragmentation merges the base and sled.
        store.defragment().unwrap();
        same(&store, &twin, "after a second defragmentation");
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
