//! The in-memory key index: for every key, its revisions in order, with
//! tombstones ending each generation (a life from creation to deletion).
//! Rebuilt from the backend at start-up; values stay in the backend.
//!
//! Each change also carries the key's creation revision and version, as
//! etcd's key index does, so that a put learns them without reading the
//! old value from the backend.
//!
//! It holds an entry per key for the store's whole life, so entries are
//! kept small: the key is a boxed slice (no spare capacity) and the usual
//! single revision sits inline, without a heap allocation of its own.

use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

use super::revision::Revision;

/// What one revision is counted as holding beyond its key and value: its
/// revision, versions and lease as stored (see `KeyIndex::held_bytes`).
pub const REVISION_OVERHEAD: u64 = 64;

/// One change of a key. A tombstone, which ends a generation, has version
/// 0 (and creation 0), as etcd stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    rev: Revision,
    /// The main revision that created the key's current generation.
    created: i64,
    /// The key's version after this change: 1 at creation.
    version: i64,
    /// The value's length (0 for a tombstone), for `held_bytes`.
    value_len: u32,
}

impl Change {
    fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    fn live(&self) -> Live {
        Live { rev: self.rev, created: self.created, version: self.version }
    }
}

/// A live key's state as of some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// The revision holding its value.
    pub rev: Revision,
    pub created: i64,
    pub version: i64,
}

/// A key's changes, oldest first.
type Changes = SmallVec<[Change; 1]>;

#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Box<[u8]>, Changes>,
    held: u64,
}

type Bounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// A key range as etcd defines it: an empty `end` means the single `key`,
/// `end == [0]` means every key from `key` on, otherwise `[key, end)`.
#[derive(Debug, Clone, Copy)]
pub struct KeyRange<'a> {
    pub key: &'a [u8],
    pub end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], end: &'a [u8]) -> KeyRange<'a> {
        KeyRange { key, end }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self.end {
            [] => k == self.key,
            [0] => k >= self.key,
            end => k >= self.key && k < end,
        }
    }

    fn bounds(&self) -> Option<Bounds<'a>> {
        match self.end {
            [] => Some((Bound::Included(self.key), Bound::Included(self.key))),
            [0] => Some((Bound::Included(self.key), Bound::Unbounded)),
            end if end <= self.key => None,
            end => Some((Bound::Included(self.key), Bound::Excluded(end))),
        }
    }
}

impl KeyIndex {
    /// Records a put at `rev`, the newest revision; returns the key's
    /// creation revision and version after it.
    pub fn put(&mut self, key: &[u8], rev: Revision, value_len: usize) -> Live {
        let value_len = clamp_len(value_len);
        let change = self.push(key, |last| match last {
            Some(c) if !c.is_tombstone() => Change { rev, created: c.created, version: c.version + 1, value_len },
            _ => Change { rev, created: rev.main, version: 1, value_len },
        });
        change.live()
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Revision) {
        self.push(key, |_| Change { rev, created: 0, version: 0, value_len: 0 });
    }

    /// Re-enters a stored change (version 0: a tombstone) as the backend
    /// holds it; rebuilding goes in revision order.
    pub fn restore(&mut self, key: &[u8], rev: Revision, created: i64, version: i64, value_len: usize) {
        self.push(key, |_| Change { rev, created, version, value_len: clamp_len(value_len) });
    }

    /// Bytes the retained history holds, as the backend quota counts them:
    /// for every revision not compacted yet, its key and value plus
    /// `REVISION_OVERHEAD`. What a user stored, whatever the backend's files
    /// take on disk.
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// Appends the change `make` derives from the key's last one, with one
    /// lookup: this runs for every put.
    fn push(&mut self, key: &[u8], make: impl FnOnce(Option<&Change>) -> Change) -> Change {
        let change = self.push_change(key, make);
        self.held += held(key, &change);
        change
    }

    fn push_change(&mut self, key: &[u8], make: impl FnOnce(Option<&Change>) -> Change) -> Change {
        match self.keys.get_mut(key) {
            Some(changes) => {
                let change = make(changes.last());
                changes.push(change);
                change
            }
            None => {
                let change = make(None);
                self.keys.insert(key.into(), smallvec::smallvec![change]);
                change
            }
        }
    }

    /// Takes back the last change of `key` if it is `rev` (a txn rolling back).
    pub fn undo(&mut self, key: &[u8], rev: Revision) {
        if let Some(changes) = self.keys.get_mut(key) {
            if changes.last().is_some_and(|c| c.rev == rev) {
                if let Some(c) = changes.pop() {
                    self.held -= held(key, &c);
                }
            }
            if changes.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// The revision holding `key`'s value as of store revision `at`, if the
    /// key existed then.
    pub fn get(&self, key: &[u8], at: i64) -> Option<Revision> {
        live_at(self.keys.get(key)?, at).map(|c| c.rev)
    }

    /// `key` as of the newest revision, if it is live.
    pub fn current(&self, key: &[u8]) -> Option<Live> {
        let last = self.keys.get(key)?.last()?;
        (!last.is_tombstone()).then(|| last.live())
    }

    /// Keys live at `at` within `range`, in key order, with their revisions.
    pub fn range<'s>(&'s self, range: KeyRange<'s>, at: i64) -> impl Iterator<Item = (&'s [u8], Revision)> + 's {
        let iter = range.bounds().map(|(lo, hi)| {
            self.keys
                .range::<[u8], _>((lo, hi))
                .filter_map(move |(k, changes)| live_at(changes, at).map(|c| (&**k, c.rev)))
        });
        iter.into_iter().flatten()
    }

    /// Drops history no longer readable after compacting at `at`: every
    /// revision below the one each key had at `at`, and that one too if it is
    /// a tombstone. Returns the revisions whose values can be deleted.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut dropped = Vec::new();
        let mut freed = 0;
        self.keys.retain(|key, changes| {
            let n = changes.partition_point(|c| c.rev.main <= at);
            if n == 0 {
                return true;
            }
            let cut = if changes[n - 1].is_tombstone() { n } else { n - 1 };
            dropped.extend(changes.drain(..cut).map(|c| {
                freed += held(key, &c);
                c.rev
            }));
            // A key rewritten often spilled to the heap; one left moves back inline.
            changes.shrink_to_fit();
            !changes.is_empty()
        });
        self.held -= freed;
        dropped
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

fn clamp_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn held(key: &[u8], c: &Change) -> u64 {
    key.len() as u64 + c.value_len as u64 + REVISION_OVERHEAD
}

fn live_at(changes: &[Change], at: i64) -> Option<&Change> {
    let n = changes.partition_point(|c| c.rev.main <= at);
    let last = changes.get(n.checked_sub(1)?)?;
    (!last.is_tombstone()).then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn generations_and_reads_at_revisions() {
        let mut idx = KeyIndex::default();
        idx.put(b"a", r(2), 1);
        idx.put(b"a", r(3), 1);
        idx.tombstone(b"a", r(4));
        idx.put(b"a", r(6), 1);
        assert_eq!(idx.get(b"a", 1), None);
        assert_eq!(idx.get(b"a", 2), Some(r(2)));
        assert_eq!(idx.get(b"a", 3), Some(r(3)));
        assert_eq!(idx.get(b"a", 5), None);
        assert_eq!(idx.get(b"a", 9), Some(r(6)));
    }

    #[test]
    fn puts_count_versions_within_a_generation() {
        let mut idx = KeyIndex::default();
        assert_eq!(idx.put(b"a", r(2), 1), Live { rev: r(2), created: 2, version: 1 });
        assert_eq!(idx.put(b"a", Revision::new(3, 1), 1), Live { rev: Revision::new(3, 1), created: 2, version: 2 });
        idx.tombstone(b"a", r(4));
        assert_eq!(idx.current(b"a"), None);
        assert_eq!(idx.put(b"a", r(5), 1), Live { rev: r(5), created: 5, version: 1 });
        // Compaction drops the creating change; the rest still knows it.
        idx.put(b"a", r(6), 1);
        idx.compact(6);
        assert_eq!(idx.put(b"a", r(7), 1), Live { rev: r(7), created: 5, version: 3 });
        // Rebuilt from stored changes, creation and version come from them.
        let mut rebuilt = KeyIndex::default();
        rebuilt.restore(b"a", r(7), 5, 3, 1);
        assert_eq!(rebuilt.put(b"a", r(8), 1), Live { rev: r(8), created: 5, version: 4 });
        // Undoing a put brings the previous state back.
        rebuilt.undo(b"a", r(8));
        assert_eq!(rebuilt.current(b"a"), Some(Live { rev: r(7), created: 5, version: 3 }));
    }

    #[test]
    fn ranges_follow_etcd_rules() {
        let mut idx = KeyIndex::default();
        for (i, k) in [&b"a"[..], b"ab", b"b", b"c"].iter().enumerate() {
            idx.put(k, r(i as i64 + 2), 1);
        }
        let keys = |key: &[u8], end: &[u8]| {
            idx.range(KeyRange::new(key, end), 100).map(|(k, _)| k.to_vec()).collect::<Vec<_>>()
        };
        assert_eq!(keys(b"a", b""), vec![b"a".to_vec()]);
        assert_eq!(keys(b"a", b"b"), vec![b"a".to_vec(), b"ab".to_vec()]);
        assert_eq!(keys(b"b", b"\0"), vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(keys(b"\0", b"\0").len(), 4);
        assert!(keys(b"c", b"a").is_empty());
        assert!(keys(b"zz", b"").is_empty());
    }

    #[test]
    fn held_bytes_count_every_revision_until_compacted() {
        let per = |key: &[u8], value: usize| key.len() as u64 + value as u64 + REVISION_OVERHEAD;
        let mut idx = KeyIndex::default();
        idx.put(b"a", r(2), 100);
        idx.put(b"a", r(3), 50);
        idx.tombstone(b"a", r(4));
        idx.put(b"bb", r(5), 10);
        assert_eq!(idx.held_bytes(), per(b"a", 100) + per(b"a", 50) + per(b"a", 0) + per(b"bb", 10));
        idx.put(b"bb", r(6), 7);
        idx.undo(b"bb", r(6));
        assert_eq!(idx.held_bytes(), per(b"a", 100) + per(b"a", 50) + per(b"a", 0) + per(b"bb", 10));
        // Compacting at 5 drops all of a's history (it ends in a tombstone).
        idx.compact(5);
        assert_eq!(idx.held_bytes(), per(b"bb", 10));
        let mut rebuilt = KeyIndex::default();
        rebuilt.restore(b"bb", r(5), 5, 1, 10);
        assert_eq!(rebuilt.held_bytes(), idx.held_bytes());
    }

    #[test]
    fn compaction_keeps_what_is_readable() {
        let mut idx = KeyIndex::default();
        idx.put(b"a", r(2), 1);
        idx.put(b"a", r(3), 1);
        idx.put(b"b", r(4), 1);
        idx.tombstone(b"b", r(5));
        idx.put(b"c", r(6), 1);
        let mut dropped = idx.compact(5);
        dropped.sort();
        assert_eq!(dropped, vec![r(2), r(4), r(5)]);
        assert_eq!(idx.get(b"a", 5), Some(r(3)));
        assert_eq!(idx.get(b"b", 9), None);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.get(b"c", 6), Some(r(6)));
    }

    #[test]
    fn compaction_moves_a_rewritten_key_back_inline() {
        let mut idx = KeyIndex::default();
        for main in 2..10 {
            idx.put(b"a", r(main), 1);
        }
        assert!(idx.keys[&b"a"[..]].spilled());
        idx.compact(9);
        assert_eq!(idx.get(b"a", 9), Some(r(9)));
        assert!(!idx.keys[&b"a"[..]].spilled(), "one revision left, still on the heap");
    }
}
