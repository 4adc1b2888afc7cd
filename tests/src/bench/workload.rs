//! The workloads, modeled on etcd's `tools/benchmark`, driven through a
//! stock client (the `etcd-client` crate) so they measure any
//! etcd-compatible server the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, GetOptions, KvClient, Txn, TxnOp, WatchOptions};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

use super::stats::{Report, Samples};

/// When a run stops: after a number of requests, or after a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Total(u64),
    Duration(Duration),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub endpoints: Vec<String>,
    /// How to connect (TLS), or plain.
    pub connect: Option<etcd_client::ConnectOptions>,
    /// gRPC connections; clients share them round-robin.
    pub conns: usize,
    /// Concurrent requesters.
    pub clients: usize,
    pub limit: Limit,
    pub progress: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub key_size: usize,
    pub val_size: usize,
    pub key_space_size: u64,
    pub sequential: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Put(KeySpec),
    Range {
        key: String,
        prefix: bool,
        serializable: bool,
        limit: i64,
    },
    TxnPut {
        keys: KeySpec,
        ops: usize,
    },
    /// `watchers` watchers over `keys` keys; the run's requests are puts to
    /// those keys and each event's delivery latency is measured.
    Watch {
        watchers: usize,
        keys: usize,
    },
    LeaseKeepalive,
}

impl KeySpec {
    /// Key number `n` as `key_size` bytes (big-endian, zero-padded), as
    /// etcd's benchmark encodes them.
    pub fn key(&self, n: u64) -> Vec<u8> {
        let space = self.key_space_size.max(1);
        self.encode(if self.sequential { n % space } else { rand::rng().random_range(0..space) })
    }

    /// `count` distinct keys for request `n` (one txn may not put a key
    /// twice): consecutive from where `key(n)` would start.
    pub fn distinct_keys(&self, n: u64, count: u64) -> Vec<Vec<u8>> {
        let space = self.key_space_size.max(count).max(1);
        let start = if self.sequential { n * count } else { rand::rng().random_range(0..space) };
        (0..count).map(|i| self.encode((start + i) % space)).collect()
    }

    fn encode(&self, k: u64) -> Vec<u8> {
        let be = k.to_be_bytes();
        let size = self.key_size.max(1);
        let mut key = vec![0u8; size];
        let take = be.len().min(size);
        key[size - take..].copy_from_slice(&be[be.len() - take..]);
        key
    }
}

pub async fn connect(opts: &RunOptions) -> Result<Vec<Client>, etcd_client::Error> {
    let mut conns = Vec::new();
    for _ in 0..opts.conns.max(1) {
        conns.push(Client::connect(opts.endpoints.clone(), opts.connect.clone()).await?);
    }
    Ok(conns)
}

fn progress(opts: &RunOptions, len: u64) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}") {
        pb.set_style(style);
    }
    pb
}

/// One request of a workload on a client task's own KV client.
type Request<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Runs `request` from `clients` concurrent tasks until the limit, each
/// request given a sequence number; measures every one. Each task takes its
/// KV client once: cloning a whole `Client` per request (all its service
/// clients) cost the load generator about a tenth of its CPU.
async fn drive<F>(opts: &RunOptions, conns: &[Client], request: F) -> Report
where
    F: for<'a> Fn(&'a mut KvClient, u64) -> Request<'a> + Clone + Send + 'static,
{
    let (total, deadline) = match opts.limit {
        Limit::Total(n) => (n, None),
        Limit::Duration(d) => (u64::MAX, Some(Instant::now() + d)),
    };
    let pb = progress(opts, if total == u64::MAX { 0 } else { total });
    let tickets = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..opts.clients.max(1) {
        let (mut kv, tickets, request, pb) =
            (conns[i % conns.len()].kv_client(), tickets.clone(), request.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let n = tickets.fetch_add(1, Ordering::Relaxed);
                if n >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t = Instant::now();
                match request(&mut kv, n).await {
                    Ok(()) => samples.ok(t.elapsed()),
                    Err(e) => samples.error(e),
                }
                pb.inc(1);
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        match t.await {
            Ok(s) => all.merge(s),
            Err(e) => all.error(format!("client task failed: {e}")),
        }
    }
    pb.finish_and_clear();
    Report::new(all, start.elapsed())
}

pub async fn run(workload: &Workload, opts: &RunOptions) -> Result<Report, etcd_client::Error> {
    let conns = connect(opts).await?;
    Ok(match workload.clone() {
        Workload::Put(keys) => {
            let value = vec![b'v'; keys.val_size];
            drive(opts, &conns, move |c, n| {
                let (key, value) = (keys.key(n), value.clone());
                Box::pin(async move { c.put(key, value, None).await.map(drop).map_err(|e| e.to_string()) })
            })
            .await
        }
        Workload::Range { key, prefix, serializable, limit } => {
            drive(opts, &conns, move |c, _| {
                let mut o = GetOptions::new().with_limit(limit);
                if prefix {
                    o = o.with_prefix();
                }
                if serializable {
                    o = o.with_serializable();
                }
                let key = key.clone();
                Box::pin(async move { c.get(key, Some(o)).await.map(drop).map_err(|e| e.to_string()) })
            })
            .await
        }
        Workload::TxnPut { keys, ops } => {
            let value = vec![b'v'; keys.val_size];
            drive(opts, &conns, move |c, n| {
                let puts: Vec<TxnOp> =
                    keys.distinct_keys(n, ops as u64).into_iter().map(|k| TxnOp::put(k, value.clone(), None)).collect();
                Box::pin(async move { c.txn(Txn::new().and_then(puts)).await.map(drop).map_err(|e| e.to_string()) })
            })
            .await
        }
        Workload::Watch { watchers, keys } => watch(opts, &conns, watchers, keys).await,
        Workload::LeaseKeepalive => lease_keepalive(opts, &conns).await,
    })
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn watch_key(i: usize) -> String {
    format!("bench-watch/{i:06}")
}

/// Watchers first, then puts carrying their send time; every event's
/// delivery latency is one sample. Each put yields one event per watcher of
/// its key, and the report counts events.
async fn watch(opts: &RunOptions, conns: &[Client], watchers: usize, keys: usize) -> Report {
    let keys = keys.max(1);
    let received = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    // The key of each watcher that was created.
    let mut watched = Vec::new();
    let mut failed = Samples::default();
    for w in 0..watchers {
        let mut c = conns[w % conns.len()].clone();
        match c.watch(watch_key(w % keys), None::<WatchOptions>).await {
            Ok(stream) => {
                streams.push(stream);
                watched.push(w % keys);
            }
            Err(e) => failed.error(format!("watch: {e}")),
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for mut stream in streams {
        let (received, mut stop) = (received.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let resp = tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(resp)) => resp,
                        _ => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                };
                for ev in resp.events() {
                    let sent = ev.kv().map(|kv| kv.value()).and_then(|v| v.try_into().ok()).map(u64::from_be_bytes);
                    match sent {
                        Some(sent) => samples.ok(Duration::from_micros(now_us().saturating_sub(sent))),
                        None => samples.error("event without a timestamp".into()),
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            samples
        }));
    }
    let start = Instant::now();
    let puts = drive(opts, conns, move |c, n| {
        Box::pin(async move {
            c.put(watch_key(n as usize % keys), now_us().to_be_bytes().to_vec(), None)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    })
    .await;
    // Each put reaches every watcher of its key.
    let per_key = |k: usize| watched.iter().filter(|&&w| w == k).count() as u64;
    let expected: u64 = (0..puts.ok).map(|n| per_key(n as usize % keys)).sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(true);
    let mut all = failed;
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    let got = all.latencies_us.len() as u64;
    if got < expected {
        all.error(format!("{} of {expected} events not delivered", expected - got));
    }
    for e in puts.error_samples {
        all.error(format!("put: {e}"));
    }
    Report::new(all, elapsed)
}

/// Each client holds a lease and sends keepalives on its stream; a sample is
/// one keepalive round trip.
async fn lease_keepalive(opts: &RunOptions, conns: &[Client]) -> Report {
    let (total, deadline) = match opts.limit {
        Limit::Total(n) => (n, None),
        Limit::Duration(d) => (u64::MAX, Some(Instant::now() + d)),
    };
    let pb = progress(opts, if total == u64::MAX { 0 } else { total });
    let tickets = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..opts.clients.max(1) {
        let (mut c, tickets, pb) = (conns[i % conns.len()].clone(), tickets.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let lease = match c.lease_grant(60, None).await {
                Ok(l) => l.id(),
                Err(e) => {
                    samples.error(format!("lease grant: {e}"));
                    return samples;
                }
            };
            let (mut keeper, mut stream) = match c.lease_keep_alive(lease).await {
                Ok(pair) => pair,
                Err(e) => {
                    samples.error(format!("keepalive stream: {e}"));
                    return samples;
                }
            };
            loop {
                let n = tickets.fetch_add(1, Ordering::Relaxed);
                if n >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t = Instant::now();
                let answer = match keeper.keep_alive().await {
                    Ok(()) => stream.message().await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(Some(_)) => samples.ok(t.elapsed()),
                    Ok(None) => samples.error("keepalive stream closed".into()),
                    Err(e) => samples.error(e.to_string()),
                }
                pb.inc(1);
            }
            let _ = c.lease_revoke(lease).await;
            samples
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        match t.await {
            Ok(s) => all.merge(s),
            Err(e) => all.error(format!("client task failed: {e}")),
        }
    }
    pb.finish_and_clear();
    Report::new(all, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_space() {
        let spec = KeySpec { key_size: 8, val_size: 1, key_space_size: 1000, sequential: true };
        assert_eq!(spec.key(5), vec![0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(spec.key(1005), spec.key(5), "sequential keys wrap at the key space");
        let small = KeySpec { key_size: 2, val_size: 1, key_space_size: 70_000, sequential: true };
        assert_eq!(small.key(0x1_0203), vec![0x02, 0x03], "keys keep their low bytes");
        let random = KeySpec { key_size: 4, val_size: 1, key_space_size: 10, sequential: false };
        assert!((0..100).all(|n| random.key(n)[3] < 10 && random.key(n)[..3] == [0, 0, 0]));
        for n in 0..100 {
            let mut ks = random.distinct_keys(n, 5);
            ks.sort();
            ks.dedup();
            assert_eq!(ks.len(), 5, "a txn's keys are distinct");
        }
    }
}
