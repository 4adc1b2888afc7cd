//! Point-in-time images of the whole backend (Maintenance.Snapshot).
//!
//! An image is taken without holding writers: under the state lock only the
//! small mutable records (meta, leases, attachments) are copied and the
//! current revision fixed; the revision records up to it never change
//! afterwards, except by compaction, whose deletions wait for a later
//! commit while the image holds the "history pin".
//!
//! Format (ferrocd's own; etcd's is a bbolt file):
//! `MAGIC`, then records `u32 key length, key, u32 value length, value`
//! (big-endian), then `u32::MAX`, zero padding to a multiple of 512 bytes,
//! and the SHA-256 of everything before it, as etcd ends its snapshots
//! (`etcdctl snapshot save` checks that the size is 32 past a multiple of 512).

use std::io::Write;

use sha2::{Digest, Sha256};

use super::backend::{rev_key, KEY_PREFIX, META_APPLIED_KEY};
use super::error::{MvccError, Result};
use super::revision::Revision;
use super::store::Store;

pub const MAGIC: &[u8; 16] = b"ferrocd-snap-v1\n";
const END: u32 = u32::MAX;
const ALIGN: u64 = 512;
const SHA_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The store revision the image holds.
    pub revision: i64,
    pub records: u64,
    /// Bytes written, checksum included.
    pub size: u64,
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    out: W,
    sha: Sha256,
    written: u64,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sha.update(bytes);
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn record(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)
    }
}

fn io(e: std::io::Error) -> MvccError {
    MvccError::Corrupt(format!("writing a snapshot: {e}"))
}

impl Store {
    /// Writes a consistent image of the backend to `out`.
    pub fn snapshot(&self, out: impl Write) -> Result<SnapshotInfo> {
        let mut w = Hashing { out, sha: Sha256::new(), written: 0 };
        let mut records = 0u64;
        w.put(MAGIC).map_err(io)?;
        // Everything but the revision records (small, changed in place), then
        // the revision records, which the pin keeps.
        let at = self.pin_history(|k, v| {
            records += 1;
            w.record(k, v).map_err(io)
        })?;
        let revision = at.rev;
        let db = self.db.read();
        for item in db.records(Revision::new(0, 0), Revision::new(revision + 1, 0)) {
            let (rev, v) = item?;
            w.record(&rev_key(rev), &v).map_err(io)?;
            records += 1;
        }
        w.put(&END.to_be_bytes()).map_err(io)?;
        let pad = (ALIGN - w.written % ALIGN) % ALIGN;
        w.put(&vec![0; pad as usize]).map_err(io)?;
        let sha = w.sha.clone().finalize();
        w.out.write_all(&sha).map_err(io)?;
        w.out.flush().map_err(io)?;
        Ok(SnapshotInfo { revision, records, size: w.written + SHA_LEN as u64 })
    }
}

/// A snapshot read back and verified.
#[derive(Debug)]
pub struct SnapshotImage {
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl SnapshotImage {
    /// Checks the checksum, the size rule and the framing.
    pub fn parse(data: &[u8]) -> Result<SnapshotImage> {
        let bad = |why: &str| MvccError::Corrupt(format!("snapshot: {why}"));
        if data.len() < MAGIC.len() + SHA_LEN || data.len() as u64 % ALIGN != SHA_LEN as u64 {
            return Err(bad("size is not 32 bytes past a multiple of 512"));
        }
        let (body, sha) = data.split_at(data.len() - SHA_LEN);
        if Sha256::digest(body).as_slice() != sha {
            return Err(bad("SHA-256 mismatch"));
        }
        let mut rest = body.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("not a ferrocd snapshot"))?;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(bad("truncated record"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let mut records = Vec::new();
        loop {
            let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("length"))?);
            if len == END {
                break;
            }
            let key = take(len as usize)?.to_vec();
            let vlen = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("length"))?);
            records.push((key, take(vlen as usize)?.to_vec()));
        }
        Ok(SnapshotImage { records })
    }

    /// CRC-32 of every record: what Maintenance.Hash answered for the
    /// backend at the image's point.
    pub fn hash(&self) -> u32 {
        let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = self.records.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = crc32fast::Hasher::new();
        for (k, v) in sorted {
            h.update(k);
            h.update(v);
        }
        h.finalize()
    }

    /// The revisions of the key records, in order.
    pub fn revisions(&self) -> Vec<Revision> {
        self.records
            .iter()
            .filter(|(k, _)| k.first() == Some(&KEY_PREFIX))
            .filter_map(|(k, _)| Revision::from_bytes(&k[1..]))
            .collect()
    }

    /// The store revision the image holds (from its applied-state record).
    pub fn revision(&self) -> Option<i64> {
        let (_, v) = self.records.iter().find(|(k, _)| k.as_slice() == META_APPLIED_KEY)?;
        Some(i64::from_be_bytes(v.get(16..24)?.try_into().ok()?))
    }
}

/// Meta records that name the member that took the image: a restored
/// backend gets its own identity from its flags at first start.
pub(super) const IDENTITY_KEYS: [&[u8]; 2] = [b"mmember_id", b"mcluster_id"];
/// The membership record: a restored member starts as a new cluster, whose
/// members come from its flags.
const MEMBERSHIP_KEY: &[u8] = b"mmembership";

impl SnapshotImage {
    /// Writes the image into a new backend at `path` (which must not exist):
    /// the keys, leases, auth and alarms come back; the member identity and
    /// the raft position do not, so the member starts as a new one-member
    /// cluster at the image's revision (as after `etcdutl snapshot restore`).
    pub fn restore(&self, path: &std::path::Path) -> Result<SnapshotInfo> {
        if path.exists() {
            return Err(MvccError::Corrupt(format!("{} already exists", path.display())));
        }
        let revision = self.revision().ok_or_else(|| MvccError::Corrupt("snapshot without applied state".into()))?;
        let db = sled::Config::new().path(path).open()?;
        let mut batch = sled::Batch::default();
        for (k, v) in &self.records {
            if IDENTITY_KEYS.contains(&k.as_slice()) || k.as_slice() == MEMBERSHIP_KEY {
                continue;
            }
            if k.as_slice() == META_APPLIED_KEY {
                // No raft entry has been applied in the new cluster yet.
                if v.len() != 32 {
                    return Err(MvccError::Corrupt(format!("applied record of {} bytes", v.len())));
                }
                let mut applied = v.clone();
                applied[..16].fill(0);
                batch.insert(k.as_slice(), applied);
            } else {
                batch.insert(k.as_slice(), v.as_slice());
            }
        }
        db.apply_batch(batch)?;
        db.flush()?;
        Ok(SnapshotInfo { revision, records: self.records.len() as u64, size: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::LeaseRecord;

    #[test]
    fn images_hold_the_store_at_one_revision_and_detect_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            let mut b = store.write();
            b.txn().put(format!("k{i}").as_bytes(), vec![b'v'; 100], 0);
            b.put_lease(7, LeaseRecord { ttl: 60, remaining_ttl: 0 });
            b.commit(i + 1, 1);
        }
        let mut data = Vec::new();
        let info = store.snapshot(&mut data).unwrap();
        assert_eq!((info.revision, info.size), (6, data.len() as u64));
        assert_eq!(data.len() % 512, 32);
        let image = SnapshotImage::parse(&data).unwrap();
        assert_eq!(image.revision(), Some(6));
        assert_eq!(image.revisions().iter().map(|r| r.main).collect::<Vec<_>>(), [2, 3, 4, 5, 6]);
        assert_eq!(image.records.len() as u64, info.records);
        assert!(image.records.iter().any(|(k, _)| k[0] == b'l'), "leases are in the image");

        let mut flipped = data.clone();
        flipped[40] ^= 1;
        assert!(SnapshotImage::parse(&flipped).is_err());
        assert!(SnapshotImage::parse(&data[..data.len() - 1]).is_err());
    }
}
