//! Installing a leader's snapshot image (raft snapshot catch-up): the image
//! becomes a fresh database beside the backend, which then replaces it as a
//! defragmentation's copy does (`settle_dirs` finishes or undoes a swap a
//! crash interrupted). The member keeps its own identity records.

use super::backend::{clear_side_dirs, open_sled, wait_closed};
use super::error::Result;
use super::snapshot::{SnapshotImage, IDENTITY_KEYS};
use super::store::Store;

/// Records per sled batch while writing the image.
const WRITE_BATCH: usize = 10_000;

impl Store {
    /// Replaces everything the store holds with `image`; returns the raft
    /// index the image had applied.
    pub fn install(&self, image: &SnapshotImage) -> Result<u64> {
        let _one_at_a_time = self.defrag_lock.lock();
        let fresh_path = clear_side_dirs(&self.path)?;
        let identity: Vec<(&[u8], Option<Vec<u8>>)> = IDENTITY_KEYS
            .iter()
            .map(|k| Ok((*k, self.meta(std::str::from_utf8(&k[1..]).unwrap_or_default())?)))
            .collect::<Result<_>>()?;
        let fresh = open_sled(&fresh_path)?;
        let mut batch = sled::Batch::default();
        for (n, (k, v)) in image.records.iter().enumerate() {
            if !IDENTITY_KEYS.contains(&k.as_slice()) {
                batch.insert(k.as_slice(), v.as_slice());
            }
            if n % WRITE_BATCH == WRITE_BATCH - 1 {
                fresh.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        for (k, v) in identity {
            if let Some(v) = v {
                batch.insert(k, v);
            }
        }
        fresh.apply_batch(batch)?;
        fresh.flush()?;
        drop(fresh);
        wait_closed(&fresh_path)?;
        self.replace_with(&fresh_path)?;
        Ok(self.consistent_index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{KeyRange, KvRead, RangeOptions};

    #[test]
    fn an_installed_image_replaces_the_store_and_keeps_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let leader = Store::open(&dir.path().join("leader")).unwrap();
        for i in 0..50u64 {
            let mut b = leader.write();
            b.txn().put(format!("k{i}").as_bytes(), vec![b'v'; 10], 0);
            b.commit(i + 1, 2);
        }
        leader.put_meta_durable("member_id", &1u64.to_be_bytes()).unwrap();
        let mut data = Vec::new();
        leader.snapshot(&mut data).unwrap();
        let image = SnapshotImage::parse(&data).unwrap();

        let follower = Store::open(&dir.path().join("follower")).unwrap();
        follower.put_meta_durable("member_id", &2u64.to_be_bytes()).unwrap();
        let mut b = follower.write();
        b.txn().put(b"stale", b"x".to_vec(), 0);
        b.commit(1, 1);
        assert_eq!(follower.install(&image).unwrap(), 50);
        assert_eq!((follower.consistent_index(), follower.current_rev()), (50, 51));
        let read = follower.read();
        let all = read.range(KeyRange::new(b"", b"\0"), RangeOptions::default()).unwrap();
        assert_eq!(all.kvs.len(), 50);
        drop(read);
        assert_eq!(follower.meta("member_id").unwrap(), Some(2u64.to_be_bytes().to_vec()), "identity kept");
        // Writes go on from the image's revision, and survive a reopen.
        let mut b = follower.write();
        b.txn().put(b"after", b"y".to_vec(), 0);
        b.commit(51, 2);
        follower.flush().unwrap();
        drop(follower);
        let reopened = Store::open(&dir.path().join("follower")).unwrap();
        assert_eq!((reopened.consistent_index(), reopened.current_rev()), (51, 52));
    }
}
