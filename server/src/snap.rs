//! Raft snapshot metadata files under `<data-dir>/member/snap`, named
//! `<term>-<index>.snap` as etcd names them. The state they describe is the
//! backend itself, which is made durable before a snapshot file is written.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// How many snapshot files to keep (etcd's `--max-snapshots` default).
const KEEP: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("snapshot I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot file {0} is corrupt")]
    Corrupt(PathBuf),
}

type Result<T> = std::result::Result<T, SnapError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapError + '_ {
    move |source| SnapError::Io { path: path.to_path_buf(), source }
}

/// What a snapshot covers: the log up to `index` (of `term`), and the voters
/// and learners at that point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapMeta {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

pub struct Snapshotter {
    dir: PathBuf,
}

impl Snapshotter {
    pub fn new(dir: &Path) -> Result<Snapshotter> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(Snapshotter { dir: dir.to_path_buf() })
    }

    /// Writes a snapshot file atomically (temp file, fsync, rename, fsync dir)
    /// and drops the oldest beyond the ones kept.
    pub fn save(&self, meta: &SnapMeta) -> Result<()> {
        let body = encode(meta);
        let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let path = self.dir.join(format!("{:016x}-{:016x}.snap", meta.term, meta.index));
        let tmp = path.with_extension("snap.tmp");
        fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        for old in self.files()?.into_iter().rev().skip(KEEP) {
            fs::remove_file(&old.1).map_err(io_err(&old.1))?;
        }
        Ok(())
    }

    /// The newest readable snapshot. A damaged newest file (a crash while it
    /// was renamed in is not possible, but a bad disk is) falls back to older ones.
    pub fn load_newest(&self) -> Result<Option<SnapMeta>> {
        for (_, path) in self.files()?.into_iter().rev() {
            match read(&path) {
                Ok(meta) => return Ok(Some(meta)),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable snapshot"),
            }
        }
        Ok(None)
    }

    /// Every snapshot file, oldest first, read and checked.
    pub fn check(&self) -> Result<Vec<(PathBuf, Result<SnapMeta>)>> {
        Ok(self.files()?.into_iter().map(|(_, path)| (path.clone(), read(&path))).collect())
    }

    /// Snapshot files sorted oldest first by (term, index).
    fn files(&self) -> Result<Vec<((u64, u64), PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".snap.tmp") {
                // Left by a crash before rename: never complete.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some((term, index)) = name.strip_suffix(".snap").and_then(|s| s.split_once('-')) else {
                continue;
            };
            if let (Ok(t), Ok(i)) = (u64::from_str_radix(term, 16), u64::from_str_radix(index, 16)) {
                out.push(((i, t), path));
            }
        }
        out.sort();
        Ok(out)
    }
}

fn read(path: &Path) -> Result<SnapMeta> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let corrupt = || SnapError::Corrupt(path.to_path_buf());
    let (crc, body) = bytes.split_at_checked(4).ok_or_else(corrupt)?;
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(corrupt());
    }
    decode(body).ok_or_else(corrupt)
}

fn encode(m: &SnapMeta) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [m.index, m.term, m.voters.len() as u64, m.learners.len() as u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for id in m.voters.iter().chain(&m.learners) {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

fn decode(b: &[u8]) -> Option<SnapMeta> {
    let words: Vec<u64> = b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
    if !b.len().is_multiple_of(8) || words.len() < 4 {
        return None;
    }
    let (nv, nl) = (words[2] as usize, words[3] as usize);
    if words.len() != 4 + nv + nl {
        return None;
    }
    Some(SnapMeta {
        index: words[0],
        term: words[1],
        voters: words[4..4 + nv].to_vec(),
        learners: words[4 + nv..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_old_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshotter::new(dir.path()).unwrap();
        assert_eq!(s.load_newest().unwrap(), None);
        for i in 1..=8u64 {
            s.save(&SnapMeta { index: i * 100, term: 2, voters: vec![9], learners: vec![] }).unwrap();
        }
        assert_eq!(s.files().unwrap().len(), KEEP);
        let newest = s.load_newest().unwrap().unwrap();
        assert_eq!(newest, SnapMeta { index: 800, term: 2, voters: vec![9], learners: vec![] });
    }

    #[test]
    fn corrupt_newest_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshotter::new(dir.path()).unwrap();
        s.save(&SnapMeta { index: 5, term: 1, voters: vec![1, 2], learners: vec![3] }).unwrap();
        s.save(&SnapMeta { index: 9, term: 1, voters: vec![1, 2], learners: vec![3] }).unwrap();
        let newest = s.files().unwrap().last().unwrap().1.clone();
        fs::write(&newest, b"garbage!").unwrap();
        assert_eq!(s.load_newest().unwrap().unwrap().index, 5);
    }
}
