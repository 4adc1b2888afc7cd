//! Latency and throughput statistics of one benchmark run.

use std::fmt;
use std::time::Duration;

/// What one client task measured: a latency per successful request and the
/// errors it met.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub latencies_us: Vec<u64>,
    pub errors: u64,
    /// A few error messages, to say why requests failed.
    pub error_samples: Vec<String>,
}

const ERROR_SAMPLES: usize = 3;

impl Samples {
    pub fn ok(&mut self, latency: Duration) {
        self.latencies_us.push(latency.as_micros() as u64);
    }

    pub fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        for m in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&m) {
                self.error_samples.push(m);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Successful requests per second.
    pub throughput: f64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub error_samples: Vec<String>,
}

impl Report {
    pub fn new(mut samples: Samples, elapsed: Duration) -> Report {
        samples.latencies_us.sort_unstable();
        let l = &samples.latencies_us;
        let q = |p: f64| Duration::from_micros(percentile(l, p));
        Report {
            ok: l.len() as u64,
            errors: samples.errors,
            elapsed,
            throughput: if elapsed.is_zero() { 0.0 } else { l.len() as f64 / elapsed.as_secs_f64() },
            p50: q(50.0),
            p90: q(90.0),
            p99: q(99.0),
            p999: q(99.9),
            max: Duration::from_micros(l.last().copied().unwrap_or(0)),
            error_samples: samples.error_samples,
        }
    }
}

/// The nearest-rank percentile of sorted values (0 for none).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps float error (0.999 * 1000 = 999.0000001) off the rank.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Summary:")?;
        writeln!(f, "  Requests:    {} ok, {} errors", self.ok, self.errors)?;
        writeln!(f, "  Total:       {:.4} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "  Throughput:  {:.1} req/s", self.throughput)?;
        writeln!(f, "Latency:")?;
        for (name, d) in
            [("p50", self.p50), ("p90", self.p90), ("p99", self.p99), ("p99.9", self.p999), ("max", self.max)]
        {
            writeln!(f, "  {name:<6} {}", ms(d))?;
        }
        for e in &self.error_samples {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&v, 100.0), 1000);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn report_merges_and_counts() {
        let mut a = Samples::default();
        let mut b = Samples::default();
        for i in 1..=90 {
            a.ok(Duration::from_micros(i));
        }
        for i in 91..=100 {
            b.ok(Duration::from_micros(i));
        }
        b.error("boom".into());
        b.error("boom".into());
        a.merge(b);
        let r = Report::new(a, Duration::from_secs(2));
        assert_eq!((r.ok, r.errors), (100, 2));
        assert_eq!(r.throughput, 50.0);
        assert_eq!(r.p50, Duration::from_micros(50));
        assert_eq!(r.p99, Duration::from_micros(99));
        assert_eq!(r.max, Duration::from_micros(100));
        assert_eq!(r.error_samples, vec!["boom".to_string()]);
    }
}
