//! The workloads, modeled on etcd's `tools/benchmark`, speaking etcd's v3
//! gRPC API so they measure any etcd-compatible server the same way: the
//! request-per-sample ones (put, range, txn) through a lean gRPC caller
//! (`grpc`), the streaming ones (watch, lease keepalive) through a stock
//! client (the `etcd-client` crate).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, WatchOptions};
use ferrocd::proto::etcdserverpb::{
    request_op, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

use super::grpc::Connection;
use super::stats::{Report, Samples};
use crate::certs::ClientTls;

/// When a run stops: after a number of requests, or after a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Total(u64),
    Duration(Duration),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub endpoints: Vec<String>,
    /// How to connect over TLS (`https://` endpoints), or plain.
    pub tls: Option<ClientTls>,
    /// gRPC connections to each endpoint; clients share them round-robin.
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

/// `conns` stock clients, each over all endpoints (for the streaming
/// workloads).
pub async fn connect(opts: &RunOptions) -> Result<Vec<Client>, etcd_client::Error> {
    let options = opts.tls.as_ref().map(|t| etcd_client::ConnectOptions::new().with_tls(t.etcd.clone()));
    let mut conns = Vec::new();
    for _ in 0..opts.conns.max(1) {
        conns.push(Client::connect(opts.endpoints.clone(), options.clone()).await?);
    }
    Ok(conns)
}

/// `conns` connections to each endpoint, endpoints alternating (clients
/// taking them in turn spread over all endpoints).
pub async fn open(opts: &RunOptions) -> Result<Vec<Connection>, String> {
    if opts.endpoints.is_empty() {
        return Err("no endpoints".into());
    }
    let tls = opts.tls.as_ref().map(|t| &t.rustls);
    let mut conns = Vec::new();
    for _ in 0..opts.conns.max(1) {
        for endpoint in &opts.endpoints {
            conns.push(Connection::open(endpoint, tls).await?);
        }
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

/// One request of a workload on a client task's own connection handle.
type Request<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";
const TXN: &str = "/etcdserverpb.KV/Txn";

/// Puts `value` at `key`.
fn put<'a>(c: &'a mut Connection, key: Vec<u8>, value: Vec<u8>) -> Request<'a> {
    let req = PutRequest { key, value, ..Default::default() };
    Box::pin(async move { c.unary::<_, PutResponse>(PUT, &req).await.map(drop) })
}

/// Runs `request` from `clients` concurrent tasks until the limit, each
/// request given a sequence number; measures every one.
async fn drive<F>(opts: &RunOptions, conns: &[Connection], request: F) -> Report
where
    F: for<'a> Fn(&'a mut Connection, u64) -> Request<'a> + Clone + Send + 'static,
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
        let (mut conn, tickets, request, pb) =
            (conns[i % conns.len()].clone(), tickets.clone(), request.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let n = tickets.fetch_add(1, Ordering::Relaxed);
                if n >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t = Instant::now();
                match request(&mut conn, n).await {
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

/// Runs `workload`; fails if a connection cannot be made.
pub async fn run(workload: &Workload, opts: &RunOptions) -> Result<Report, String> {
    // Lease keepalives run on stock clients alone.
    let conns = if *workload == Workload::LeaseKeepalive { Vec::new() } else { open(opts).await? };
    Ok(match workload.clone() {
        Workload::Put(keys) => {
            let value = vec![b'v'; keys.val_size];
            drive(opts, &conns, move |c, n| put(c, keys.key(n), value.clone())).await
        }
        Workload::Range { key, prefix, serializable, limit } => {
            let range_end = if prefix { ferrocd::api::prefix_end(key.as_bytes()) } else { Vec::new() };
            let req = RangeRequest { key: key.into_bytes(), range_end, limit, serializable, ..Default::default() };
            drive(opts, &conns, move |c, _| {
                let req = req.clone();
                Box::pin(async move { c.unary::<_, RangeResponse>(RANGE, &req).await.map(drop) })
            })
            .await
        }
        Workload::TxnPut { keys, ops } => {
            let value = vec![b'v'; keys.val_size];
            drive(opts, &conns, move |c, n| {
                let success = keys
                    .distinct_keys(n, ops as u64)
                    .into_iter()
                    .map(|key| {
                        let put = PutRequest { key, value: value.clone(), ..Default::default() };
                        RequestOp { request: Some(request_op::Request::RequestPut(put)) }
                    })
                    .collect();
                let req = TxnRequest { success, ..Default::default() };
                Box::pin(async move { c.unary::<_, TxnResponse>(TXN, &req).await.map(drop) })
            })
            .await
        }
        Workload::Watch { watchers, keys } => {
            let clients = connect(opts).await.map_err(|e| e.to_string())?;
            watch(opts, &clients, &conns, watchers, keys).await
        }
        Workload::LeaseKeepalive => lease_keepalive(opts, &connect(opts).await.map_err(|e| e.to_string())?).await,
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
async fn watch(opts: &RunOptions, clients: &[Client], conns: &[Connection], watchers: usize, keys: usize) -> Report {
    let keys = keys.max(1);
    let received = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    // The key of each watcher that was created.
    let mut watched = Vec::new();
    let mut failed = Samples::default();
    for w in 0..watchers {
        let mut c = clients[w % clients.len()].clone();
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
        put(c, watch_key(n as usize % keys).into_bytes(), now_us().to_be_bytes().to_vec())
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
