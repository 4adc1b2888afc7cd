//! The disk's own write latency, the floor under a durable 1-client put:
//! small appends, each followed by one fdatasync, in a file on the same
//! file system as the servers' data dirs (the system temp dir).

use std::fs::File;
use std::io::{self, Write};
use std::time::Instant;

use super::stats::percentile;

/// Bytes per append: about one put's WAL record.
const RECORD: usize = 300;

/// Median microseconds of `n` appends of 300 bytes, each fdatasynced, to a
/// file whose blocks are written ahead (as a WAL's tail segment is), so no
/// fdatasync has to write the inode.
pub fn fdatasync_p50_us(n: usize) -> io::Result<u64> {
    let dir = tempfile::tempdir()?;
    let mut file = File::create(dir.path().join("fsync-probe"))?;
    file.write_all(&vec![0u8; RECORD * n])?;
    file.sync_all()?;
    let mut file = std::fs::OpenOptions::new().write(true).open(dir.path().join("fsync-probe"))?;
    let record = [b'x'; RECORD];
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        took.push(t.elapsed().as_micros() as u64);
    }
    took.sort_unstable();
    Ok(percentile(&took, 50.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_fits_in_the_time_taken() {
        // Half the samples are at least the median, so it is at most
        // twice the mean: a sum or a maximum would not be.
        let n = 40;
        let t = Instant::now();
        let p50 = fdatasync_p50_us(n).unwrap();
        let mean = t.elapsed().as_micros() as u64 / n as u64;
        assert!(p50 <= 2 * mean, "p50 {p50} µs against a mean of {mean} µs");
    }
}
