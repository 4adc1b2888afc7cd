//! A digest of which revision records sled holds, stored in sled in the same
//! atomic batch as the records it describes and checked when the backend
//! opens. sled's checksums catch a damaged record, but damage to one of its
//! log segments can make it recover an older version of a tree node and so
//! silently drop records written later, while newer records (the applied
//! index among them) survive; the WAL then replays nothing and the member
//! would serve a history with holes. Revision records are written once and
//! deleted once, so an order-independent sum over their keys, with their
//! count, changes whenever one goes missing or comes back.

use super::error::{MvccError, Result};
use super::revision::Revision;

/// The record holding the digest: `m` + "revdigest".
pub(super) const DIGEST_KEY: &[u8] = b"mrevdigest";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Digest {
    sum: u64,
    count: i64,
}

impl Digest {
    pub(super) fn add(&mut self, rev: Revision) {
        self.sum = self.sum.wrapping_add(mix(rev));
        self.count += 1;
    }

    pub(super) fn remove(&mut self, rev: Revision) {
        self.sum = self.sum.wrapping_sub(mix(rev));
        self.count -= 1;
    }

    /// Both changes together (`other` is a change, not a whole digest).
    pub(super) fn merged(self, other: Digest) -> Digest {
        Digest { sum: self.sum.wrapping_add(other.sum), count: self.count + other.count }
    }

    pub(super) fn count(&self) -> i64 {
        self.count
    }

    pub(super) fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.sum.to_be_bytes());
        out[8..].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    pub(super) fn decode(v: &[u8]) -> Result<Digest> {
        let bad = || MvccError::Corrupt(format!("revision digest record of {} bytes", v.len()));
        let sum = v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        let count = v.get(8..16).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        if v.len() != 16 {
            return Err(bad());
        }
        Ok(Digest { sum: u64::from_be_bytes(sum), count: i64::from_be_bytes(count) })
    }
}

/// A well-mixed 64-bit value per revision (splitmix64's finalizer), so that
/// a missing record cannot be made up for by another's.
fn mix(rev: Revision) -> u64 {
    let finalize = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    finalize((rev.main as u64).wrapping_add(finalize(rev.sub as u64 ^ 0x9e37_79b9_7f4a_7c15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_returning_record_changes_the_digest() {
        let mut all = Digest::default();
        for main in 1..100 {
            for sub in 0..3 {
                all.add(Revision::new(main, sub));
            }
        }
        let mut missing = all;
        missing.remove(Revision::new(50, 1));
        assert_ne!(missing, all);
        let mut change = Digest::default();
        change.add(Revision::new(50, 1));
        assert_eq!(missing.merged(change), all, "order does not matter");
        assert_eq!(Digest::decode(&all.encode()).unwrap(), all);
        assert!(Digest::decode(&[0; 15]).is_err());
    }
}
