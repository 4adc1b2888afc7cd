//! The base: revision records laid out compactly by a defragmentation, in
//! one immutable file beside sled's (`<db>/base`). sled takes 2.5 to 4 times
//! the bytes it is given when a copy is loaded into a fresh database (see
//! docs/benchmarks.md); written here once, in revision order, the records
//! take their own size and a few bytes of framing. Revisions up to `cut` live
//! here, newer ones in sled; compaction marks base records dead (in memory:
//! the start-up scan finds them again as compacted), and the next
//! defragmentation leaves them out.
//!
//! Format: `MAGIC`, `cut: i64 BE`, then records `len: u32 LE | crc32(rev +
//! value): u32 LE | rev: 16 bytes | value` (`len` counts the value), then
//! `u32::MAX` and the record count (`u64 LE`).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use super::error::{MvccError, Result};
use super::revision::Revision;

const MAGIC: &[u8; 16] = b"ferrocd-base-v1\n";
const HEADER: usize = 4 + 4 + 16;
const END: u32 = u32::MAX;
/// The base's file name inside the backend's directory.
pub(super) const FILE: &str = "base";

/// One record's place in the file.
#[derive(Debug, Clone, Copy)]
struct Slot {
    rev: Revision,
    offset: u64,
    len: u32,
}

#[derive(Debug, Default)]
pub(super) struct Base {
    file: Option<File>,
    path: PathBuf,
    /// The newest main revision the base holds records for.
    cut: i64,
    /// In revision order.
    slots: Vec<Slot>,
    size: u64,
    /// Records compaction deleted since the base was written.
    dead: RwLock<HashSet<Revision>>,
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> MvccError {
    MvccError::Corrupt(format!("base {}: {why}", path.display()))
}

fn record_crc(rev: &[u8], value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(rev);
    h.update(value);
    h.finalize()
}

impl Base {
    /// Writes a base of `records` (in revision order, all at or below `cut`)
    /// to `path`, synced, and opens it.
    pub(super) fn write(
        path: &Path,
        cut: i64,
        records: impl Iterator<Item = Result<(Revision, Vec<u8>)>>,
    ) -> Result<Base> {
        let io = |e: std::io::Error| corrupt(path, format!("writing: {e}"));
        let file = File::create(path).map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&cut.to_be_bytes()).map_err(io)?;
        let mut slots = Vec::new();
        let mut at = (MAGIC.len() + 8) as u64;
        for record in records {
            let (rev, value) = record?;
            let len = u32::try_from(value.len()).map_err(|_| corrupt(path, "a value over 4 GiB"))?;
            if rev.main > cut || slots.last().is_some_and(|s: &Slot| s.rev >= rev) {
                return Err(corrupt(path, format!("revision {rev:?} out of order")));
            }
            let rev_bytes = rev.to_bytes();
            out.write_all(&len.to_le_bytes()).map_err(io)?;
            out.write_all(&record_crc(&rev_bytes, &value).to_le_bytes()).map_err(io)?;
            out.write_all(&rev_bytes).map_err(io)?;
            out.write_all(&value).map_err(io)?;
            slots.push(Slot { rev, offset: at + HEADER as u64, len });
            at += (HEADER + value.len()) as u64;
        }
        out.write_all(&END.to_le_bytes()).map_err(io)?;
        out.write_all(&(slots.len() as u64).to_le_bytes()).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        let file = File::open(path).map_err(io)?;
        let size = at + 12;
        Ok(Base { file: Some(file), path: path.to_path_buf(), cut, slots, size, dead: RwLock::default() })
    }

    /// The same base, its file renamed to `path` (the open file goes on).
    pub(super) fn moved_to(mut self, path: &Path) -> Base {
        self.path = path.to_path_buf();
        self
    }

    /// How many records the base holds, compacted ones included.
    pub(super) fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Opens the base at `path` (an empty one if there is none), checking
    /// every record, and hands each to `each` in revision order. Reads the
    /// file once, front to back, a record at a time.
    pub(super) fn open(path: &Path, mut each: impl FnMut(Revision, &[u8]) -> Result<()>) -> Result<Base> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Base { path: path.to_path_buf(), ..Default::default() })
            }
            Err(e) => return Err(corrupt(path, format!("opening: {e}"))),
        };
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut at = 0u64;
        let mut read = |buf: &mut [u8], at: &mut u64| -> Result<()> {
            reader.read_exact(buf).map_err(|e| corrupt(path, format!("reading at offset {at}: {e}")))?;
            *at += buf.len() as u64;
            Ok(())
        };
        let mut head = [0u8; MAGIC.len() + 8];
        read(&mut head, &mut at)?;
        if &head[..MAGIC.len()] != MAGIC {
            return Err(corrupt(path, "no base magic"));
        }
        let cut = i64::from_be_bytes(head[MAGIC.len()..].try_into().unwrap_or_default());
        let (mut slots, mut value) = (Vec::<Slot>::new(), Vec::new());
        loop {
            let start = at;
            let mut len = [0u8; 4];
            read(&mut len, &mut at)?;
            let len = u32::from_le_bytes(len);
            if len == END {
                let mut count = [0u8; 8];
                read(&mut count, &mut at)?;
                let size = file.metadata().map_err(|e| corrupt(path, e))?.len();
                if u64::from_le_bytes(count) != slots.len() as u64 || at != size {
                    return Err(corrupt(path, format!("bad trailer at offset {start}")));
                }
                return Ok(Base {
                    file: Some(file),
                    path: path.to_path_buf(),
                    cut,
                    slots,
                    size,
                    dead: RwLock::default(),
                });
            }
            let mut header = [0u8; HEADER - 4];
            read(&mut header, &mut at)?;
            value.resize(len as usize, 0);
            read(&mut value, &mut at)?;
            let (crc, rev_bytes) = header.split_at(4);
            if record_crc(rev_bytes, &value).to_le_bytes() != crc {
                return Err(corrupt(path, format!("checksum mismatch at offset {start}")));
            }
            let rev = Revision::from_bytes(rev_bytes).ok_or_else(|| corrupt(path, "bad revision"))?;
            if rev.main > cut || slots.last().is_some_and(|s| s.rev >= rev) {
                return Err(corrupt(path, format!("revision {rev:?} out of order at offset {start}")));
            }
            each(rev, &value)?;
            slots.push(Slot { rev, offset: start + HEADER as u64, len });
        }
    }

    /// Whether `rev` belongs to the base (it may still be compacted).
    pub(super) fn covers(&self, rev: Revision) -> bool {
        rev.main <= self.cut
    }

    pub(super) fn cut(&self) -> i64 {
        self.cut
    }

    /// Bytes of the file.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// The stored value of revision `rev`, if the base has it.
    pub(super) fn get(&self, rev: Revision) -> Result<Option<Vec<u8>>> {
        match self.slots.binary_search_by_key(&rev, |s| s.rev) {
            Ok(i) => self.read(self.slots[i]).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn read(&self, slot: Slot) -> Result<Vec<u8>> {
        let file = self.file.as_ref().ok_or_else(|| corrupt(&self.path, "not open"))?;
        let mut value = vec![0; slot.len as usize];
        file.read_exact_at(&mut value, slot.offset).map_err(|e| corrupt(&self.path, format!("reading: {e}")))?;
        Ok(value)
    }

    /// Records from `from` up to (not including) `to` that compaction has
    /// not deleted, in revision order.
    pub(super) fn range(&self, from: Revision, to: Revision) -> impl Iterator<Item = Result<(Revision, Vec<u8>)>> + '_ {
        let start = self.slots.partition_point(|s| s.rev < from);
        let end = self.slots.partition_point(|s| s.rev < to);
        self.slots[start..end.max(start)]
            .iter()
            .filter(|s| !self.dead.read().contains(&s.rev))
            .map(|s| Ok((s.rev, self.read(*s)?)))
    }

    /// Compaction deleted `rev`: it is no longer part of the store.
    /// Returns false if `rev` is not the base's to drop (but sled's).
    pub(super) fn mark_dead(&self, rev: Revision) -> bool {
        let covered = self.covers(rev);
        if covered {
            self.dead.write().insert(rev);
        }
        covered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let records: Vec<(Revision, Vec<u8>)> =
            (1..=5).map(|i| (Revision::new(i, 0), format!("value-{i}").into_bytes())).collect();
        assert_eq!(Base::write(&path, 6, records.clone().into_iter().map(Ok)).unwrap().len(), 5);
        let mut seen = Vec::new();
        let base = Base::open(&path, |rev, v| {
            seen.push((rev, v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, records);
        assert_eq!(base.get(Revision::new(3, 0)).unwrap(), Some(b"value-3".to_vec()));
        assert_eq!(base.get(Revision::new(3, 1)).unwrap(), None);
        assert!(base.covers(Revision::new(6, 0)) && !base.covers(Revision::new(7, 0)));
        base.mark_dead(Revision::new(2, 0));
        let revs: Vec<i64> = base.range(Revision::new(0, 0), Revision::new(5, 0)).map(|r| r.unwrap().0.main).collect();
        assert_eq!(revs, [1, 3, 4]);
        assert_eq!(base.size(), std::fs::metadata(&path).unwrap().len());

        let clean = std::fs::read(&path).unwrap();
        for at in [MAGIC.len() + 8 + 2, MAGIC.len() + 8 + HEADER + 1, clean.len() - 3] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x20;
            std::fs::write(&path, &bytes).unwrap();
            assert!(Base::open(&path, |_, _| Ok(())).is_err(), "damage at {at} not caught");
        }
        std::fs::write(&path, &clean[..clean.len() - 1]).unwrap();
        assert!(Base::open(&path, |_, _| Ok(())).is_err(), "a cut file is not caught");
        // No file: an empty base.
        let none = Base::open(&dir.path().join("none"), |_, _| Ok(())).unwrap();
        assert!(!none.covers(Revision::new(1, 0)) && none.size() == 0);
    }
}
