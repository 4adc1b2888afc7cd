//! The write-ahead log: raft entries and hard state, appended to segment files
//! under `<data-dir>/member/wal`, each record checksummed, synced once per
//! batch. Nothing is acknowledged to a client before the WAL holds it.
//!
//! Record layout: `len: u32 LE | crc32(kind + payload): u32 LE | kind: u8 | payload`.
//! Segment names are `<seq>-<first index>.wal` (hex), as etcd names them, so
//! purging after a snapshot can drop whole files by name.
//!
//! The tail segment is zero-filled ahead of the write position, a chunk at a
//! time: an fdatasync of a write inside the file need not write the inode
//! too, which a growing file costs on every sync. Zeros after the records
//! mark the end of the log; a rolled segment is cut to its records.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Segments roll over once they pass this size (etcd's segment size).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

const HEADER: usize = 8;
/// How far ahead of the write position the tail segment is zero-filled.
const PREALLOC_CHUNK: u64 = 2 * 1024 * 1024;
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("wal segment {path} is corrupt at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("wal is missing entries: expected index {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
}

type Result<T> = std::result::Result<T, WalError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// One raft log entry; `data` is the raft entry as encoded by the raft layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// What the WAL held on open: the last hard state and the entries after the
/// snapshot index given to `open`.
#[derive(Debug, Default)]
pub struct Replay {
    pub hard_state: HardState,
    pub entries: Vec<LogEntry>,
    /// Bytes cut from a torn last record.
    pub repaired_bytes: u64,
}

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    first_index: u64,
    path: PathBuf,
}

pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    file: File,
    /// End of the records in the tail segment.
    size: u64,
    /// Length of the tail segment file (records, then zeros).
    allocated: u64,
    last_index: u64,
    hard_state: HardState,
    segment_bytes: u64,
    buf: Vec<u8>,
    syncs: u64,
}

impl Wal {
    pub fn exists(dir: &Path) -> bool {
        list_segments(dir).map(|s| !s.is_empty()).unwrap_or(false)
    }

    /// Creates an empty WAL whose first entry will be `first_index`.
    pub fn create(dir: &Path, first_index: u64) -> Result<Wal> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let seg = Segment { seq: 0, first_index, path: dir.join(segment_name(0, first_index)) };
        let file = new_segment_file(&seg.path)?;
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            segments: vec![seg],
            file,
            size: 0,
            allocated: 0,
            last_index: first_index.saturating_sub(1),
            hard_state: HardState::default(),
            segment_bytes: SEGMENT_BYTES,
            buf: Vec::new(),
            syncs: 0,
        })
    }

    /// Opens an existing WAL, returning the entries after `snapshot_index`.
    /// A torn record at the end of the last segment (a crash mid-write) is cut
    /// off; damage anywhere else is an error.
    pub fn open(dir: &Path, snapshot_index: u64) -> Result<(Wal, Replay)> {
        let segments = list_segments(dir)?;
        let mut replay = Replay::default();
        let last_seg = segments.len().saturating_sub(1);
        // Where the records of the last segment end.
        let mut tail_end = 0u64;
        for (i, seg) in segments.iter().enumerate() {
            let bytes = fs::read(&seg.path).map_err(io_err(&seg.path))?;
            let mut offset = 0usize;
            while offset < bytes.len() {
                match decode_record(&bytes[offset..]) {
                    Ok((kind, payload, len)) => {
                        apply_record(&mut replay, kind, payload, snapshot_index, seg, offset)?;
                        offset += len;
                    }
                    // The preallocated rest of the segment.
                    Err(_) if bytes[offset..].iter().all(|b| *b == 0) => break,
                    Err(reason) if i == last_seg => {
                        let cut = (bytes.len() - offset) as u64;
                        tracing::warn!(segment = %seg.path.display(), offset, cut, %reason, "repairing torn wal tail");
                        let f = OpenOptions::new().write(true).open(&seg.path).map_err(io_err(&seg.path))?;
                        f.set_len(offset as u64).map_err(io_err(&seg.path))?;
                        f.sync_all().map_err(io_err(&seg.path))?;
                        replay.repaired_bytes = cut;
                        break;
                    }
                    Err(reason) => {
                        return Err(WalError::Corrupt { path: seg.path.clone(), offset: offset as u64, reason })
                    }
                }
            }
            tail_end = offset as u64;
        }
        let tail = segments.last().ok_or_else(|| WalError::Corrupt {
            path: dir.to_path_buf(),
            offset: 0,
            reason: "no wal segments".into(),
        })?;
        let file = OpenOptions::new().write(true).open(&tail.path).map_err(io_err(&tail.path))?;
        let allocated = file.metadata().map_err(io_err(&tail.path))?.len();
        let size = tail_end.min(allocated);
        let last_index =
            replay.entries.last().map(|e| e.index).unwrap_or(snapshot_index.max(tail.first_index.saturating_sub(1)));
        let wal = Wal {
            dir: dir.to_path_buf(),
            segments,
            file,
            size,
            allocated,
            last_index,
            hard_state: replay.hard_state,
            segment_bytes: SEGMENT_BYTES,
            buf: Vec::new(),
            syncs: 0,
        };
        Ok((wal, replay))
    }

    /// Appends a hard state and entries, then (if `sync`) fdatasyncs once for
    /// the whole batch: this is the group commit point. Returns how long the
    /// fdatasync took, if there was one.
    pub fn save(
        &mut self,
        hard_state: Option<HardState>,
        entries: &[LogEntry],
        sync: bool,
    ) -> Result<Option<std::time::Duration>> {
        self.buf.clear();
        for e in entries {
            let mut payload = Vec::with_capacity(16 + e.data.len());
            payload.extend_from_slice(&e.index.to_le_bytes());
            payload.extend_from_slice(&e.term.to_le_bytes());
            payload.extend_from_slice(&e.data);
            encode_record(&mut self.buf, KIND_ENTRY, &payload);
        }
        if let Some(hs) = hard_state {
            encode_record(&mut self.buf, KIND_HARD_STATE, &encode_hard_state(&hs));
            self.hard_state = hs;
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let path = self.tail_path().to_path_buf();
        let end = self.size + self.buf.len() as u64;
        if end > self.allocated {
            // One extension (and one inode write) per chunk, synced with this batch.
            let target = (end / PREALLOC_CHUNK + 1) * PREALLOC_CHUNK;
            write_zeros(&self.file, self.allocated, target).map_err(io_err(&path))?;
            self.allocated = target;
        }
        self.file.write_all_at(&self.buf, self.size).map_err(io_err(&path))?;
        self.size = end;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        let mut took = None;
        if sync {
            let start = std::time::Instant::now();
            self.file.sync_data().map_err(io_err(&path))?;
            took = Some(start.elapsed());
            self.syncs += 1;
        }
        if self.size >= self.segment_bytes {
            self.roll()?;
        }
        Ok(took)
    }

    /// Starts a new segment that opens with the current hard state, so older
    /// segments can later be purged without losing it.
    fn roll(&mut self) -> Result<()> {
        // The finished segment keeps only its records.
        let tail = self.tail_path().to_path_buf();
        self.file.set_len(self.size).map_err(io_err(&tail))?;
        self.file.sync_all().map_err(io_err(&tail))?;
        let seq = self.segments.last().map(|s| s.seq + 1).unwrap_or(0);
        let seg = Segment {
            seq,
            first_index: self.last_index + 1,
            path: self.dir.join(segment_name(seq, self.last_index + 1)),
        };
        self.file = new_segment_file(&seg.path)?;
        self.buf.clear();
        encode_record(&mut self.buf, KIND_HARD_STATE, &encode_hard_state(&self.hard_state));
        self.file.write_all_at(&self.buf, 0).map_err(io_err(&seg.path))?;
        self.file.sync_data().map_err(io_err(&seg.path))?;
        self.size = self.buf.len() as u64;
        self.allocated = self.size;
        self.segments.push(seg);
        sync_dir(&self.dir)
    }

    /// Deletes segments whose entries are all at or below `index` (covered by
    /// a snapshot whose backend is durable). The tail segment is always kept.
    pub fn purge(&mut self, index: u64) -> Result<usize> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_index <= index + 1 {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// fdatasyncs of batches so far (one per group commit).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn tail_path(&self) -> &Path {
        &self.segments[self.segments.len() - 1].path
    }

    #[cfg(test)]
    fn set_segment_bytes(&mut self, n: u64) {
        self.segment_bytes = n;
    }
}

fn apply_record(
    replay: &mut Replay,
    kind: u8,
    payload: &[u8],
    snapshot_index: u64,
    seg: &Segment,
    offset: usize,
) -> Result<()> {
    let corrupt =
        |reason: &str| WalError::Corrupt { path: seg.path.clone(), offset: offset as u64, reason: reason.into() };
    match kind {
        KIND_ENTRY => {
            if payload.len() < 16 {
                return Err(corrupt("short entry record"));
            }
            let index = u64::from_le_bytes(payload[..8].try_into().map_err(|_| corrupt("index"))?);
            let term = u64::from_le_bytes(payload[8..16].try_into().map_err(|_| corrupt("term"))?);
            if index <= snapshot_index {
                return Ok(());
            }
            // A later record for an index already seen replaces that suffix
            // (raft overwrote an uncommitted tail).
            let keep = replay.entries.partition_point(|e| e.index < index);
            replay.entries.truncate(keep);
            let expected = replay.entries.last().map(|e| e.index + 1).unwrap_or(snapshot_index + 1);
            if index != expected {
                return Err(WalError::Gap { expected, found: index });
            }
            replay.entries.push(LogEntry { index, term, data: payload[16..].to_vec() });
        }
        KIND_HARD_STATE => {
            replay.hard_state = decode_hard_state(payload).ok_or_else(|| corrupt("short hard state record"))?;
        }
        other => return Err(corrupt(&format!("unknown record kind {other}"))),
    }
    Ok(())
}

fn encode_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    buf.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// Returns (kind, payload, total record length) or why the record is bad.
fn decode_record(bytes: &[u8]) -> std::result::Result<(u8, &[u8], usize), String> {
    if bytes.len() < HEADER + 1 {
        return Err(format!("truncated header ({} bytes left)", bytes.len()));
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len == 0 {
        return Err("zero-length record".into());
    }
    if bytes.len() < HEADER + len {
        return Err(format!("truncated record: {} of {} bytes", bytes.len() - HEADER, len));
    }
    let body = &bytes[HEADER..HEADER + len];
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((body[0], &body[1..], HEADER + len))
}

fn encode_hard_state(hs: &HardState) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&hs.term.to_le_bytes());
    out[8..16].copy_from_slice(&hs.vote.to_le_bytes());
    out[16..].copy_from_slice(&hs.commit.to_le_bytes());
    out
}

fn decode_hard_state(p: &[u8]) -> Option<HardState> {
    let word = |i: usize| p.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    Some(HardState { term: word(0)?, vote: word(1)?, commit: word(2)? })
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut segments = Vec::new();
    for entry in read {
        let path = entry.map_err(io_err(dir))?.path();
        let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        let Some((seq, first)) = stem.split_once('-') else {
            continue;
        };
        if let (Ok(seq), Ok(first_index)) = (u64::from_str_radix(seq, 16), u64::from_str_radix(first, 16)) {
            segments.push(Segment { seq, first_index, path });
        }
    }
    segments.sort_by_key(|s| s.seq);
    Ok(segments)
}

fn new_segment_file(path: &Path) -> Result<File> {
    OpenOptions::new().create_new(true).write(true).open(path).map_err(io_err(path))
}

/// Writes zeros over `[from, to)` of `file` (real blocks, not a hole).
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry { index, term, data: format!("entry-{index}").into_bytes() }
    }

    #[test]
    fn round_trip_and_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.save(Some(HardState { term: 1, vote: 7, commit: 0 }), &[entry(1, 1), entry(2, 1), entry(3, 1)], true)
            .unwrap();
        // raft replaces an uncommitted suffix from index 2
        wal.save(Some(HardState { term: 2, vote: 7, commit: 2 }), &[entry(2, 2)], true).unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.hard_state, HardState { term: 2, vote: 7, commit: 2 });
        assert_eq!(replay.entries, vec![entry(1, 1), entry(2, 2)]);
        assert_eq!(replay.repaired_bytes, 0);
    }

    #[test]
    fn torn_tail_is_cut_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.save(None, &[entry(1, 1), entry(2, 1)], true).unwrap();
        let path = wal.segments[0].path.clone();
        let end = wal.size as usize;
        drop(wal);
        let full = fs::read(&path).unwrap();
        // chop the last record in half, as a crash mid-write would
        fs::write(&path, &full[..end - 5]).unwrap();
        let (mut wal, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, vec![entry(1, 1)]);
        assert!(replay.repaired_bytes > 0);
        wal.save(None, &[entry(2, 1)], true).unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, vec![entry(1, 1), entry(2, 1)]);
    }

    #[test]
    fn garbage_tail_is_cut_but_damage_in_old_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.set_segment_bytes(64);
        for i in 1..=6 {
            wal.save(Some(HardState { term: 1, vote: 1, commit: i }), &[entry(i, 1)], true).unwrap();
        }
        assert!(wal.segment_count() > 2);
        let tail = wal.segments.last().unwrap().path.clone();
        let first = wal.segments[0].path.clone();
        drop(wal);
        let mut f = OpenOptions::new().append(true).open(&tail).unwrap();
        f.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7]).unwrap();
        drop(f);
        let (_, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries.len(), 6);
        assert_eq!(replay.hard_state.commit, 6);

        let mut bytes = fs::read(&first).unwrap();
        bytes[HEADER + 3] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        assert!(matches!(Wal::open(dir.path(), 0), Err(WalError::Corrupt { .. })));
    }

    #[test]
    fn purge_drops_covered_segments_and_keeps_hard_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.set_segment_bytes(64);
        for i in 1..=10 {
            wal.save(Some(HardState { term: 3, vote: 1, commit: i }), &[entry(i, 3)], true).unwrap();
        }
        let before = wal.segment_count();
        let removed = wal.purge(6).unwrap();
        assert!(removed > 0 && wal.segment_count() == before - removed);
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 6).unwrap();
        assert_eq!(replay.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
        assert_eq!(replay.hard_state, HardState { term: 3, vote: 1, commit: 10 });
    }

    #[test]
    fn preallocated_zeros_end_the_log_and_rolled_segments_are_cut_to_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.save(Some(HardState { term: 1, vote: 1, commit: 1 }), &[entry(1, 1), entry(2, 1)], true).unwrap();
        let path = wal.segments[0].path.clone();
        let records = wal.size;
        assert_eq!(fs::metadata(&path).unwrap().len(), PREALLOC_CHUNK, "zero-filled ahead");
        drop(wal);
        // Reopened: appends go right after the records, not after the zeros.
        let (mut wal, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!((replay.entries.len(), replay.repaired_bytes, wal.size), (2, 0, records));
        wal.save(None, &[entry(3, 1)], true).unwrap();
        drop(wal);
        let (wal, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, vec![entry(1, 1), entry(2, 1), entry(3, 1)]);

        // A record torn at its end, followed by the zeros: cut, the rest kept.
        let end = wal.size as usize;
        drop(wal);
        let mut bytes = fs::read(&path).unwrap();
        bytes[end - 3..end].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (mut wal, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, vec![entry(1, 1), entry(2, 1)]);
        assert!(replay.repaired_bytes > 0);

        // Rolling cuts the finished segment back to its records.
        wal.set_segment_bytes(1);
        wal.save(None, &[entry(3, 1)], true).unwrap();
        assert_eq!(wal.segment_count(), 2);
        let first_len = fs::metadata(&path).unwrap().len();
        assert!(first_len < 1024, "rolled segment still preallocated: {first_len} bytes");
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, vec![entry(1, 1), entry(2, 1), entry(3, 1)]);
    }

    #[test]
    fn gap_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.save(None, &[entry(1, 1), entry(3, 1)], true).unwrap();
        drop(wal);
        assert!(matches!(Wal::open(dir.path(), 0), Err(WalError::Gap { expected: 2, found: 3 })));
    }
}
