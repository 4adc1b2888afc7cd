//! Automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`),
//! with etcd's schedules. The schedule is a plain state machine driven with
//! explicit times, so it is tested without waiting; `run` drives it on the
//! leader and proposes the compactions through raft.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Retention;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::CompactionRequest;
use crate::proto::ferrocdpb::internal_request::Request;
use crate::server::EtcdServer;

/// etcd checks revision retention every 5 minutes.
const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);
const HOUR: Duration = Duration::from_secs(3600);

pub struct Schedule {
    retention: Retention,
    /// Periodic: the store revision sampled every `interval`, oldest first;
    /// the oldest is the revision of one retention period ago.
    samples: VecDeque<i64>,
    last_rev: i64,
    last_success: Instant,
    /// Time between compactions: the whole period before the first one
    /// (so nothing is compacted that is younger than the retention).
    wait: Duration,
}

impl Schedule {
    pub fn new(retention: Retention, now: Instant, current_rev: i64) -> Schedule {
        let wait = match retention {
            Retention::Periodic(p) => p,
            Retention::Revision(_) => Duration::ZERO,
        };
        Schedule { retention, samples: VecDeque::from([current_rev]), last_rev: 0, last_success: now, wait }
    }

    /// How often `tick` runs: a tenth of the period (of at most an hour),
    /// or every 5 minutes for revision retention (etcd's intervals).
    pub fn interval(&self) -> Duration {
        match self.retention {
            Retention::Periodic(p) => p.min(HOUR) / 10,
            Retention::Revision(_) => REVISION_INTERVAL,
        }
    }

    /// The revision to compact to now, if any.
    pub fn tick(&mut self, now: Instant, current_rev: i64) -> Option<i64> {
        match self.retention {
            Retention::Revision(keep) => {
                let rev = current_rev - keep;
                (rev > 0 && rev != self.last_rev).then_some(rev)
            }
            Retention::Periodic(period) => {
                let oldest = self.samples.front().copied().unwrap_or(0);
                self.samples.push_back(current_rev);
                let keep = (period.as_nanos() / self.interval().as_nanos().max(1)) as usize + 1;
                while self.samples.len() > keep {
                    self.samples.pop_front();
                }
                if now.duration_since(self.last_success) < self.wait || oldest == self.last_rev || oldest <= 0 {
                    return None;
                }
                // After the first, compact every period (at most every hour).
                self.wait = period.min(HOUR);
                Some(oldest)
            }
        }
    }

    /// A compaction to `rev` was applied (or `rev` was compacted already).
    pub fn done(&mut self, rev: i64, now: Instant) {
        self.last_rev = rev;
        self.last_success = now;
    }
}

pub async fn run(server: Arc<EtcdServer>, retention: Retention, mut stop: watch::Receiver<bool>) {
    let mut schedule = Schedule::new(retention, Instant::now(), server.store.current_rev());
    let mut ticks = tokio::time::interval(schedule.interval());
    ticks.reset();
    loop {
        tokio::select! {
            _ = async { stop.wait_for(|stopped| *stopped).await.map(|_| ()) } => return,
            _ = ticks.tick() => {}
        }
        let Some(rev) = schedule.tick(Instant::now(), server.store.current_rev()) else {
            continue;
        };
        if !server.is_leader() {
            continue;
        }
        tracing::info!(revision = rev, ?retention, "starting auto compaction");
        match server.propose(Request::Compaction(CompactionRequest { revision: rev, physical: false })).await {
            Ok(_) | Err(EtcdError::Compacted) => schedule.done(rev, Instant::now()),
            Err(e) => tracing::warn!(revision = rev, error = %e, "auto compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_keeps_one_period_of_history_and_waits_a_period_first() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Retention::Periodic(Duration::from_secs(10)), t0, 100);
        assert_eq!(s.interval(), Duration::from_secs(1));
        // Revision grows by 10 per second; nothing before a whole period.
        let mut out = Vec::new();
        for i in 1..=25u64 {
            let now = t0 + Duration::from_secs(i);
            if let Some(rev) = s.tick(now, 100 + 10 * i as i64) {
                s.done(rev, now);
                out.push((i, rev));
            }
        }
        // At 10 s: the revision of 10 s ago (the start); then every 10 s,
        // the revision sampled one period earlier.
        assert_eq!(out, vec![(10, 100), (20, 190)]);
    }

    #[test]
    fn periodic_over_an_hour_compacts_hourly() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Retention::Periodic(Duration::from_secs(3 * 3600)), t0, 1);
        assert_eq!(s.interval(), Duration::from_secs(360));
        let mut times = Vec::new();
        for i in 1..=60u64 {
            let now = t0 + Duration::from_secs(360 * i);
            if let Some(rev) = s.tick(now, 1 + i as i64) {
                s.done(rev, now);
                times.push(i * 360 / 60);
            }
        }
        // Minutes: first after 3 h, then every hour.
        assert_eq!(times, vec![180, 240, 300, 360]);
    }

    #[test]
    fn revision_keeps_the_last_n_revisions() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Retention::Revision(1000), t0, 1);
        assert_eq!(s.interval(), REVISION_INTERVAL);
        assert_eq!(s.tick(t0, 900), None, "not enough revisions yet");
        assert_eq!(s.tick(t0, 1500), Some(500));
        s.done(500, t0);
        assert_eq!(s.tick(t0, 1500), None, "nothing new to compact");
        assert_eq!(s.tick(t0, 2600), Some(1600));
    }
}
