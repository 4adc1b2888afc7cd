//! The write-ahead log: raft entries and hard state, appended to segment files
//! under `<data-dir>/member/wal`, each record checksummed, synced once per
//! batch. Nothing is acknowledged to a client before the WAL holds it.
//!
//! Segment layout: `MAGIC`, then records. Record layout: `len: u32 LE |
//! crc32(kind + payload): u32 LE | crc32(len and crc): u32 LE | kind: u8 |
//! payload`. The header's own checksum tells a damaged length from a write
//! a crash cut short (see `torn_tail`). Segments from before it (no magic,
//! no header checksum) are still read; appends go to a new segment.
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

/// Opens every segment written in the current format.
const MAGIC: [u8; 8] = *b"\0\0\0\0fcd2";
const HEADER: usize = 12;
/// How far ahead of the write position the tail segment is zero-filled.
const PREALLOC_CHUNK: u64 = 2 * 1024 * 1024;
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "wal segment {path} is corrupt at offset {offset}: {reason}. The log may hold acknowledged writes \
         past this point, so it is not cut: restore this member's data dir from a snapshot \
         (ferrocdutl snapshot restore), or, in a cluster, remove this member and add it back with an \
         empty data dir; `ferrocdutl check --data-dir DIR` lists what else is damaged"
    )]
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
    /// The index of the last entry the WAL holds, snapshot-covered or not:
    /// where the log ends. (Entry indexes start at 1, so 0 is "none yet".)
    pub last_index: u64,
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
            size: MAGIC.len() as u64,
            allocated: MAGIC.len() as u64,
            last_index: first_index.saturating_sub(1),
            hard_state: HardState::default(),
            segment_bytes: SEGMENT_BYTES,
            buf: Vec::new(),
            syncs: 0,
        })
    }

    /// Opens an existing WAL, returning the entries after `snapshot_index`.
    /// Only a torn tail is repaired (see `torn_tail`): its bytes are kept in a
    /// `.broken` file beside the segment and cut off. Damage anywhere else is
    /// an error: the log may hold acknowledged writes past it.
    pub fn open(dir: &Path, snapshot_index: u64) -> Result<(Wal, Replay)> {
        let Scan { segments, mut replay, tail_end, tail_format, torn } = scan(dir, snapshot_index)?;
        if let Some(torn) = torn {
            replay.repaired_bytes = repair(&torn)?;
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
        let mut wal = Wal {
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
        if tail_format != Format::Current {
            wal.roll()?;
        }
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
        self.file.write_all_at(&self.buf, MAGIC.len() as u64).map_err(io_err(&seg.path))?;
        self.file.sync_data().map_err(io_err(&seg.path))?;
        self.size = (MAGIC.len() + self.buf.len()) as u64;
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

/// A WAL as read from disk, before any repair.
struct Scan {
    segments: Vec<Segment>,
    replay: Replay,
    /// Where the records of the last segment end.
    tail_end: u64,
    tail_format: Format,
    torn: Option<TornTail>,
}

/// A torn tail found by `scan`: the last segment's bytes from `offset` on.
struct TornTail {
    path: PathBuf,
    bytes: Vec<u8>,
    offset: usize,
    reason: String,
}

/// Reads every record of every segment. Damage other than a torn tail is
/// an error; a torn tail is returned for the caller to repair or report.
fn scan(dir: &Path, snapshot_index: u64) -> Result<Scan> {
    let segments = list_segments(dir)?;
    let mut replay = Replay::default();
    let (mut tail_end, mut tail_format, mut torn) = (0, Format::Current, None);
    for (i, seg) in segments.iter().enumerate() {
        let bytes = fs::read(&seg.path).map_err(io_err(&seg.path))?;
        let corrupt =
            |offset: usize, reason: String| WalError::Corrupt { path: seg.path.clone(), offset: offset as u64, reason };
        let (fmt, mut offset) = Format::of(&bytes).map_err(|reason| corrupt(0, reason))?;
        while offset < bytes.len() {
            match fmt.decode(&bytes[offset..]) {
                Ok((kind, payload, len)) => {
                    apply_record(&mut replay, kind, payload, snapshot_index, seg, offset)?;
                    offset += len;
                }
                // The preallocated rest of the segment.
                Err(_) if bytes[offset..].iter().all(|b| *b == 0) => break,
                Err(reason) if i + 1 != segments.len() => {
                    return Err(corrupt(offset, format!("{reason} in a segment that later segments follow")))
                }
                Err(reason) => {
                    torn_tail(&bytes, offset, fmt, replay.last_index)
                        .map_err(|why| corrupt(offset, format!("{reason}; {why}")))?;
                    torn = Some(TornTail { path: seg.path.clone(), bytes, offset, reason });
                    break;
                }
            }
        }
        tail_end = offset as u64;
        tail_format = fmt;
    }
    if replay.last_index == 0 {
        replay.last_index = segments.last().map_or(0, |s| s.first_index.saturating_sub(1));
    }
    Ok(Scan { segments, replay, tail_end, tail_format, torn })
}

/// What `check` found in a WAL, read without changing it.
#[derive(Debug)]
pub struct WalCheck {
    pub segments: usize,
    /// Entry records read, snapshot-covered or not.
    pub entries: usize,
    pub last_index: u64,
    pub hard_state: HardState,
    /// A torn tail the next start would cut: (segment, offset, bytes, why).
    pub torn: Option<(PathBuf, u64, u64, String)>,
}

/// Reads every record of the WAL in `dir`, changing nothing: damage is an
/// error, as at start-up; a torn tail is reported.
pub fn check(dir: &Path) -> Result<WalCheck> {
    let scan = scan(dir, 0)?;
    Ok(WalCheck {
        segments: scan.segments.len(),
        entries: scan.replay.entries.len(),
        last_index: scan.replay.last_index,
        hard_state: scan.replay.hard_state,
        torn: scan.torn.map(|t| (t.path, t.offset as u64, (t.bytes.len() - t.offset) as u64, t.reason)),
    })
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
            replay.last_index = index;
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

/// Sector size of the torn-write check (etcd's `minSectorSize`): a crash
/// can keep any sector of an unsynced write from reaching the disk.
const SECTOR: usize = 512;
/// A record's bytes in a sector that are all zeros mark a torn write only if
/// there are more of them than an integer's bytes.
const MAX_ZERO_RUN_OF_AN_INTEGER: usize = 8;

/// Decides whether the bad record at `offset` of the last segment is a torn
/// tail, the one kind of damage a crash leaves and a repair may cut: it shows
/// the marks of an interrupted write (cut short by the file's end, or a
/// sector of it still all zeros as preallocated), and no valid record
/// follows it. Anything else is corruption; the error says why.
fn torn_tail(bytes: &[u8], offset: usize, fmt: Format, last_index: u64) -> std::result::Result<(), String> {
    if !shows_torn_write(bytes, offset, fmt) {
        return Err("nothing of it shows an interrupted write (a missing end or an all-zero sector)".into());
    }
    if let Some(at) = next_valid_record(bytes, offset + 1, fmt, last_index) {
        return Err(format!("a valid record follows at offset {at}"));
    }
    Ok(())
}

fn shows_torn_write(bytes: &[u8], offset: usize, fmt: Format) -> bool {
    let Some(header) = bytes.get(offset..offset + fmt.header()) else {
        return true;
    };
    // A header that fails its own checksum was torn only if part of it
    // never reached the disk; its length cannot be trusted either way.
    let header_ok = fmt.header_ok(header);
    let end = if header_ok {
        offset + fmt.header() + u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize
    } else {
        offset + fmt.header()
    };
    // (Zeros over a header that fails its checksum are the lost sector's,
    // however few: its checksum field is not zero when written.)
    let min_zeros = if header_ok { MAX_ZERO_RUN_OF_AN_INTEGER + 1 } else { 1 };
    if end > bytes.len() {
        return true;
    }
    // A sector the crash kept from the disk is zero throughout: the part the
    // record covers and whatever follows it in that sector. (The part before
    // the record may hold earlier records, written by an earlier write.)
    // A part of a few bytes proves nothing: the high bytes of the record's
    // last integer are zeros when it ends just past a sector's start (a
    // hard state's commit), and cutting such a record for damage elsewhere
    // in it would drop what was synced and maybe acknowledged.
    let mut start = offset;
    while start < end {
        let sector_end = (start / SECTOR + 1) * SECTOR;
        let covered = sector_end.min(end) - start;
        if covered >= min_zeros && bytes[start..sector_end.min(bytes.len())].iter().all(|b| *b == 0) {
            return true;
        }
        start = sector_end;
    }
    false
}

/// The offset of the first whole record at or after `from`, found by trying
/// every offset (a damaged length field hides where the next record starts).
/// Cheap tests rule out almost every offset before a checksum is computed:
/// a known kind, a length that fits, and for an entry an index no further
/// past `last_index` than the bytes left could hold.
fn next_valid_record(bytes: &[u8], from: usize, fmt: Format, last_index: u64) -> Option<usize> {
    let header = fmt.header();
    let min_entry = header + 1 + 16;
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    (from..bytes.len().saturating_sub(header + 1)).find(|&at| {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let plausible = match bytes[at + header] {
            KIND_HARD_STATE => len == 25,
            KIND_ENTRY => {
                len >= 17 && at + header + len <= bytes.len() && {
                    let index = word(at + header + 1);
                    index >= 1 && index <= last_index + 1 + ((bytes.len() - at) / min_entry) as u64
                }
            }
            _ => false,
        };
        plausible && fmt.decode(&bytes[at..]).is_ok()
    })
}

/// Keeps the torn bytes (without the zero fill after them) in
/// `<segment>.<offset>.broken`, as etcd keeps `.broken` files, then cuts the
/// segment at the torn record. Returns how many bytes were cut.
fn repair(torn: &TornTail) -> Result<u64> {
    let TornTail { path, bytes, offset, reason } = torn;
    let offset = *offset;
    let cut = (bytes.len() - offset) as u64;
    let data_end = bytes.iter().rposition(|b| *b != 0).map_or(offset, |i| i + 1).max(offset);
    let mut side = path.as_os_str().to_owned();
    side.push(format!(".{offset:016x}.broken"));
    let side = PathBuf::from(side);
    tracing::warn!(
        segment = %path.display(),
        offset,
        cut,
        kept_in = %side.display(),
        %reason,
        "repairing torn wal tail: the last record was being written when the member stopped"
    );
    let mut out = File::create(&side).map_err(io_err(&side))?;
    io::Write::write_all(&mut out, &bytes[offset..data_end]).map_err(io_err(&side))?;
    out.sync_all().map_err(io_err(&side))?;
    let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    f.set_len(offset as u64).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(cut)
}

fn encode_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    let start = buf.len();
    buf.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    let header_crc = crc32fast::hash(&buf[start..]);
    buf.extend_from_slice(&header_crc.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// The record layouts a segment may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Before the header checksum (no magic).
    V1,
    Current,
}

impl Format {
    /// A segment's format and where its records start.
    fn of(bytes: &[u8]) -> std::result::Result<(Format, usize), String> {
        if bytes.starts_with(&MAGIC) {
            Ok((Format::Current, MAGIC.len()))
        } else if bytes.iter().all(|b| *b == 0) || Format::V1.decode(bytes).is_ok() {
            Ok((Format::V1, 0))
        } else {
            Err("the segment's magic is damaged".into())
        }
    }

    fn header(self) -> usize {
        match self {
            Format::V1 => 8,
            Format::Current => HEADER,
        }
    }

    /// Whether the header at the start of `bytes` (which holds it whole)
    /// passes its own checksum.
    fn header_ok(self, bytes: &[u8]) -> bool {
        self == Format::V1 || crc32fast::hash(&bytes[..8]).to_le_bytes() == bytes[8..12]
    }

    /// Returns (kind, payload, total record length) or why the record is bad.
    fn decode(self, bytes: &[u8]) -> std::result::Result<(u8, &[u8], usize), String> {
        let header = self.header();
        if bytes.len() < header + 1 {
            return Err(format!("truncated header ({} bytes left)", bytes.len()));
        }
        if !self.header_ok(bytes) {
            return Err("record header checksum mismatch".into());
        }
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if len == 0 {
            return Err("zero-length record".into());
        }
        if bytes.len() < header + len {
            return Err(format!("truncated record: {} of {} bytes", bytes.len() - header, len));
        }
        let body = &bytes[header..header + len];
        if crc32fast::hash(body) != crc {
            return Err("checksum mismatch".into());
        }
        Ok((body[0], &body[1..], header + len))
    }
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

/// A new segment holding its magic (made durable by the first sync of what
/// follows it).
fn new_segment_file(path: &Path) -> Result<File> {
    let file = OpenOptions::new().create_new(true).write(true).open(path).map_err(io_err(path))?;
    file.write_all_at(&MAGIC, 0).map_err(io_err(path))?;
    Ok(file)
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

        // The last record's sector never reached the disk (still zeros): the
        // log ends before it, with nothing to repair.
        let end = wal.size as usize;
        drop(wal);
        let mut bytes = fs::read(&path).unwrap();
        bytes[end - record_len(&entry(3, 1))..end].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (mut wal, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, vec![entry(1, 1), entry(2, 1)]);
        assert_eq!(replay.repaired_bytes, 0);

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

    fn record_len(e: &LogEntry) -> usize {
        HEADER + 1 + 16 + e.data.len()
    }

    fn big_entry(index: u64, len: usize) -> LogEntry {
        LogEntry { index, term: 1, data: (0..len).map(|i| (i % 251) as u8 + 1).collect() }
    }

    /// A one-segment WAL of entries with the given payload sizes (each saved
    /// alone), cut to its records plus `fill` zeros. Returns its path, the
    /// entries and where each record starts.
    fn wal_of(dir: &Path, sizes: &[usize], fill: usize) -> (PathBuf, Vec<LogEntry>, Vec<usize>) {
        let mut wal = Wal::create(dir, 1).unwrap();
        let (mut entries, mut offsets) = (Vec::new(), Vec::new());
        for (i, len) in sizes.iter().enumerate() {
            let e = big_entry(i as u64 + 1, *len);
            offsets.push(wal.size as usize);
            wal.save(None, std::slice::from_ref(&e), true).unwrap();
            entries.push(e);
        }
        let path = wal.segments[0].path.clone();
        let end = wal.size as usize;
        drop(wal);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len((end + fill) as u64).unwrap();
        (path, entries, offsets)
    }

    fn corrupt_reason(dir: &Path) -> (u64, String) {
        match Wal::open(dir, 0) {
            Err(WalError::Corrupt { offset, reason, .. }) => (offset, reason),
            Err(e) => panic!("unexpected error {e}"),
            Ok((_, replay)) => panic!("opened with {} entries", replay.entries.len()),
        }
    }

    #[test]
    fn a_damaged_record_with_valid_records_after_it_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, offsets) = wal_of(dir.path(), &[100, 2000, 2000, 100], 4096);
        let mut bytes = fs::read(&path).unwrap();
        // A sector of the second record zeroed (a torn write's mark) ...
        let sector = (offsets[1] / SECTOR + 2) * SECTOR;
        bytes[sector..sector + SECTOR].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (offset, reason) = corrupt_reason(dir.path());
        assert_eq!(offset, offsets[1] as u64);
        // ... but the records after it are whole: nothing is cut.
        assert!(reason.contains(&format!("a valid record follows at offset {}", offsets[2])), "{reason}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "the segment was changed");

        // The same with a length field (and its checksum) rewritten to run
        // past the file's end: the header's own checksum gives it away.
        let (path, _, offsets) = wal_of(dir.path().join("b").as_path(), &[100, 300, 100], 4096);
        let mut bytes = fs::read(&path).unwrap();
        let mut header = 0x00ff_ffffu32.to_le_bytes().to_vec();
        header.extend_from_slice(&bytes[offsets[1] + 4..offsets[1] + 8]);
        let header_crc = crc32fast::hash(&header);
        header.extend_from_slice(&header_crc.to_le_bytes());
        bytes[offsets[1]..offsets[1] + HEADER].copy_from_slice(&header);
        fs::write(&path, &bytes).unwrap();
        let (offset, reason) = corrupt_reason(&dir.path().join("b"));
        assert_eq!((offset, reason.contains("a valid record follows")), (offsets[1] as u64, true), "{reason}");
    }

    #[test]
    fn a_whole_last_record_with_a_bad_checksum_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, offsets) = wal_of(dir.path(), &[100, 100, 700], 4096);
        let mut bytes = fs::read(&path).unwrap();
        bytes[offsets[2] + 200] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let (offset, reason) = corrupt_reason(dir.path());
        assert_eq!(offset, offsets[2] as u64);
        assert!(reason.contains("checksum mismatch") && reason.contains("nothing of it shows"), "{reason}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "the segment was changed");
        // The error names the file, the offset and the way out.
        let msg = Wal::open(dir.path(), 0).err().unwrap().to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains("snapshot restore"), "{msg}");
    }

    #[test]
    fn a_damaged_header_of_the_last_record_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        // Its length alone, or the whole header (the length could then run
        // into the zero fill or past the file's end).
        for (i, (at, len)) in [(0, 1), (0, HEADER), (2, 1), (9, 2)].into_iter().enumerate() {
            let sub = dir.path().join(i.to_string());
            let (path, _, offsets) = wal_of(&sub, &[100, 900], 4096);
            let mut bytes = fs::read(&path).unwrap();
            for b in &mut bytes[offsets[1] + at..offsets[1] + at + len] {
                *b ^= 0xff;
            }
            fs::write(&path, &bytes).unwrap();
            let (offset, reason) = corrupt_reason(&sub);
            assert_eq!(offset, offsets[1] as u64);
            assert!(reason.contains("record header checksum mismatch"), "{reason}");
        }
    }

    #[test]
    fn segments_without_the_header_checksum_are_read_and_appends_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(0, 1));
        let mut old = Vec::new();
        for e in [entry(1, 1), entry(2, 1)] {
            let mut payload = e.index.to_le_bytes().to_vec();
            payload.extend_from_slice(&e.term.to_le_bytes());
            payload.extend_from_slice(&e.data);
            let mut body = vec![KIND_ENTRY];
            body.extend_from_slice(&payload);
            old.extend_from_slice(&(body.len() as u32).to_le_bytes());
            old.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            old.extend_from_slice(&body);
        }
        old.resize(old.len() + 1000, 0);
        fs::write(&path, &old).unwrap();
        let (mut wal, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!((replay.entries, wal.segment_count()), (vec![entry(1, 1), entry(2, 1)], 2));
        wal.save(None, &[entry(3, 1)], true).unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, vec![entry(1, 1), entry(2, 1), entry(3, 1)]);
        // A segment whose magic is damaged is not mistaken for an old one.
        let new = list_segments(dir.path()).unwrap()[1].path.clone();
        let mut bytes = fs::read(&new).unwrap();
        bytes[5] ^= 1;
        fs::write(&new, &bytes).unwrap();
        assert!(corrupt_reason(dir.path()).1.contains("magic is damaged"));
    }

    /// A new WAL holding one entry sized so that the next record starts at
    /// offset `at`; the entry with it.
    fn wal_with_next_record_at(dir: &Path, at: usize) -> (Wal, LogEntry) {
        let mut wal = Wal::create(dir, 1).unwrap();
        let first = big_entry(1, at - wal.size as usize - (HEADER + 1 + 16));
        wal.save(None, std::slice::from_ref(&first), true).unwrap();
        assert_eq!(wal.size as usize, at);
        (wal, first)
    }

    #[test]
    fn a_damaged_hard_state_ending_in_zeros_just_past_a_sector_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        // The hard state record 31 bytes before a sector's end: its last 6
        // bytes, the commit's high bytes, are zeros and start the next
        // sector, as a torn write's lost sector would.
        let hard_state_at = 2 * SECTOR - 31;
        let (mut wal, _) = wal_with_next_record_at(dir.path(), hard_state_at);
        wal.save(Some(HardState { term: 1, vote: 7, commit: 1 }), &[], true).unwrap();
        let path = wal.segments[0].path.clone();
        drop(wal);
        // Damage in the sector that reached the disk.
        let mut bytes = fs::read(&path).unwrap();
        bytes[hard_state_at + 14] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(corrupt_reason(dir.path()).0, hard_state_at as u64);
    }

    #[test]
    fn a_torn_record_whose_header_starts_just_before_a_sector_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        // The last record's header has 6 bytes before a sector's end; the
        // sector after them never reached the disk.
        let (mut wal, first) = wal_with_next_record_at(dir.path(), 2 * SECTOR - 6);
        wal.save(None, &[big_entry(2, 100)], true).unwrap();
        let path = wal.segments[0].path.clone();
        drop(wal);
        let mut bytes = fs::read(&path).unwrap();
        bytes[2 * SECTOR..3 * SECTOR].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (_, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, [first]);
        assert!(replay.repaired_bytes > 0);
    }

    #[test]
    fn a_torn_last_record_is_cut_and_kept_in_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, entries, offsets) = wal_of(dir.path(), &[100, 100, 2000], 4096);
        let mut bytes = fs::read(&path).unwrap();
        let end = offsets[2] + record_len(&entries[2]);
        // The last record's final sector never reached the disk.
        let torn = (end - 1) / SECTOR * SECTOR;
        bytes[torn..end].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (mut wal, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, entries[..2]);
        assert_eq!(replay.repaired_bytes, (bytes.len() - offsets[2]) as u64);
        let side =
            dir.path().join(format!("{}.{:016x}.broken", path.file_name().unwrap().to_str().unwrap(), offsets[2]));
        assert_eq!(fs::read(&side).unwrap(), &bytes[offsets[2]..torn], "the cut bytes are kept");
        // Appending continues where the repair cut.
        wal.save(None, &entries[2..], true).unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay.entries, entries);
    }

    #[test]
    fn a_tail_truncated_mid_record_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let (path, entries, offsets) = wal_of(dir.path(), &[100, 100, 2000], 0);
        let bytes = fs::read(&path).unwrap();
        for cut in [offsets[2] + 3, offsets[2] + HEADER + 1, offsets[2] + 1500, bytes.len() - 1] {
            fs::write(&path, &bytes[..cut]).unwrap();
            let (_, replay) = Wal::open(dir.path(), 0).unwrap();
            assert_eq!((replay.entries.as_slice(), replay.last_index), (&entries[..2], 2), "cut at {cut}");
        }
    }

    /// Every single damaged byte, in any record or in the zero fill: the WAL
    /// either opens with every entry and the hard state, or is refused.
    #[test]
    fn a_damaged_byte_anywhere_never_loses_an_entry_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        let mut entries = Vec::new();
        for (i, len) in [10, 600, 30, 1100, 5].into_iter().enumerate() {
            let e = big_entry(i as u64 + 1, len);
            let hs = HardState { term: 1, vote: 1, commit: i as u64 + 1 };
            wal.save(Some(hs), std::slice::from_ref(&e), true).unwrap();
            entries.push(e);
        }
        let path = wal.segments[0].path.clone();
        let end = wal.size as usize;
        drop(wal);
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(end + 2 * SECTOR);
        // Past the sector of the records' end, a damaged byte cannot be a
        // record's: it is cut. Nearer, it shares a sector with the last
        // record and may be refused.
        let fill_sector = end.div_ceil(SECTOR) * SECTOR;
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x5a;
            fs::write(&path, &damaged).unwrap();
            match Wal::open(dir.path(), 0) {
                Ok((_, replay)) => {
                    assert!(at >= end, "damage at {at}, inside the records, was not noticed");
                    assert_eq!(replay.entries, entries, "damage at {at}: entries lost");
                    assert_eq!(replay.hard_state.commit, 5, "damage at {at}: hard state lost");
                }
                Err(WalError::Corrupt { .. }) => assert!(at < fill_sector, "damage at {at} in the zero fill refused"),
                Err(e) => panic!("damage at {at}: {e}"),
            }
        }
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
