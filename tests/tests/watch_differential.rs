//! Differential test for watches: the same watchers and the same seeded
//! writes against ferrocd and a real etcd 3.5.1 give the same responses:
//! live events (prefix, range, single key, from-key, filters, prev_kv),
//! refused creates, history replay from a revision, a progress request, and
//! the cancel of a watch that starts below the compaction. Only cluster and
//! member IDs and the raft term are ignored. `DIFF_SEED` changes the writes.

use std::collections::BTreeMap;

use ferrocd::proto::etcdserverpb::watch_client::WatchClient;
use ferrocd::proto::etcdserverpb::watch_create_request::FilterType;
use ferrocd::proto::etcdserverpb::watch_request::RequestUnion;
use ferrocd::proto::etcdserverpb::*;
use ferrocd::proto::mvccpb::Event;
use ferrocd_tests::member::Member;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const KEYS: &[&str] = &["a", "a/1", "a/2", "b", "b/1", "c", "d", "e"];
const SENTINEL: &[u8] = b"zzz";
const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
    /// Responses that arrived while waiting for a created response.
    early: std::collections::VecDeque<WatchResponse>,
}

impl Stream {
    /// Opens a stream with its first watcher: grpc-go servers send the
    /// response headers only with the first message, so the call itself
    /// returns only once there is something to answer.
    async fn open(endpoint: &str, first: WatchCreateRequest) -> Stream {
        let mut client = WatchClient::connect(endpoint.to_string()).await.expect("connect");
        let (tx, rx) = mpsc::channel(64);
        tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(first)) }).await.expect("send");
        let rx = client.watch(ReceiverStream::new(rx)).await.expect("watch stream").into_inner();
        Stream { tx, rx, early: Default::default() }
    }

    /// Opens a stream with these watchers; returns it and their created responses.
    async fn with(endpoint: &str, watchers: Vec<WatchCreateRequest>) -> (Stream, Vec<WatchResponse>) {
        let mut watchers = watchers.into_iter();
        let mut s = Stream::open(endpoint, watchers.next().expect("a watcher")).await;
        let mut created = vec![s.created().await];
        for c in watchers {
            s.create(c).await;
            created.push(s.created().await);
        }
        (s, created)
    }

    /// The next created response; events that come first (a watcher's
    /// history may) are kept for `next`.
    async fn created(&mut self) -> WatchResponse {
        loop {
            let r = self.receive().await;
            if r.created {
                return r;
            }
            self.early.push_back(r);
        }
    }

    async fn send(&self, r: RequestUnion) {
        self.tx.send(WatchRequest { request_union: Some(r) }).await.expect("send");
    }

    async fn create(&self, c: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await;
    }

    async fn next(&mut self) -> WatchResponse {
        match self.early.pop_front() {
            Some(r) => r,
            None => self.receive().await,
        }
    }

    async fn receive(&mut self) -> WatchResponse {
        let mut r = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no watch response in time")
            .expect("stream failed")
            .expect("stream ended");
        if let Some(h) = &mut r.header {
            h.cluster_id = 0;
            h.member_id = 0;
            h.raft_term = 0;
        }
        r
    }
}

fn watcher(key: &[u8], end: &[u8]) -> WatchCreateRequest {
    WatchCreateRequest { key: key.to_vec(), range_end: end.to_vec(), ..Default::default() }
}

/// The watchers each stream opens, every option etcd has except fragments
/// (which need responses larger than these writes make).
fn watchers(start_revision: i64) -> Vec<WatchCreateRequest> {
    let with = |mut c: WatchCreateRequest, f: &dyn Fn(&mut WatchCreateRequest)| {
        c.start_revision = start_revision;
        f(&mut c);
        c
    };
    vec![
        with(watcher(&[0], &[0]), &|c| c.prev_kv = true),
        with(watcher(b"a", b"b"), &|c| c.filters = vec![FilterType::Noput as i32]),
        with(watcher(b"b", b""), &|c| {
            c.filters = vec![FilterType::Nodelete as i32];
            c.prev_kv = true;
        }),
        with(watcher(b"b", b"d"), &|_| {}),
        with(watcher(b"c", &[0]), &|c| c.watch_id = 42),
        with(watcher(SENTINEL, b""), &|_| {}),
    ]
}

fn random_write(rng: &mut StdRng) -> RequestOp {
    let key = KEYS[rng.random_range(0..KEYS.len())].as_bytes().to_vec();
    let request = if rng.random_bool(0.7) {
        let value = format!("v{}", rng.random_range(0..1000)).into_bytes();
        request_op::Request::RequestPut(PutRequest { key, value, ..Default::default() })
    } else {
        let mut end = key.clone();
        if rng.random_bool(0.5) {
            *end.last_mut().expect("non-empty") += 1;
        } else {
            end.clear();
        }
        request_op::Request::RequestDeleteRange(DeleteRangeRequest { key, range_end: end, ..Default::default() })
    };
    RequestOp { request: Some(request) }
}

/// One seeded sequence of txns of 1-3 writes (distinct keys, so etcd accepts them).
fn writes(seed: u64, n: usize) -> Vec<TxnRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut ops: Vec<RequestOp> = Vec::new();
            for _ in 0..rng.random_range(1..=3) {
                let op = random_write(&mut rng);
                let key = |o: &RequestOp| match &o.request {
                    Some(request_op::Request::RequestPut(p)) => p.key.clone(),
                    Some(request_op::Request::RequestDeleteRange(d)) => d.key.clone(),
                    _ => Vec::new(),
                };
                if !ops.iter().any(|o| key(o)[..1] == key(&op)[..1]) {
                    ops.push(op);
                }
            }
            TxnRequest { success: ops, ..Default::default() }
        })
        .collect()
}

/// Reads until the sentinel watcher reports; returns every response before
/// it except those of the sentinel's own write (which other watchers may get
/// before or after the sentinel watcher, in any order).
async fn until_sentinel(s: &mut Stream, sentinel_id: i64) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    loop {
        let r = s.next().await;
        if r.watch_id == sentinel_id && !r.events.is_empty() {
            return out;
        }
        let sentinel_write = r.events.iter().any(|e| e.kv.as_ref().is_some_and(|kv| kv.key == SENTINEL));
        if !sentinel_write {
            out.push(r);
        }
    }
}

/// Reads until each watcher has `want[id]` events (those of the sentinel
/// write aside): catch-up responses of different watchers come in any order.
async fn until_counts(s: &mut Stream, want: &BTreeMap<i64, usize>) -> BTreeMap<i64, Vec<Event>> {
    let mut got: BTreeMap<i64, Vec<Event>> = want.keys().map(|id| (*id, Vec::new())).collect();
    while got.iter().any(|(id, e)| e.len() < want.get(id).copied().unwrap_or(0)) {
        let r = s.next().await;
        let events = r.events.into_iter().filter(|e| e.kv.as_ref().is_some_and(|kv| kv.key != SENTINEL));
        if let Some(e) = got.get_mut(&r.watch_id) {
            e.extend(events);
        }
    }
    got
}

fn events_by_watcher(responses: &[WatchResponse]) -> BTreeMap<i64, Vec<Event>> {
    let mut out: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    for r in responses {
        out.entry(r.watch_id).or_default().extend(r.events.iter().cloned());
    }
    out
}

struct Run {
    created: Vec<WatchResponse>,
    live: Vec<WatchResponse>,
    history: BTreeMap<i64, Vec<Event>>,
    progress: WatchResponse,
    compacted: Vec<WatchResponse>,
}

async fn run(endpoint: &str, seed: u64) -> Run {
    let mut kv = ferrocd::proto::etcdserverpb::kv_client::KvClient::connect(endpoint.to_string()).await.expect("kv");
    let (mut live, mut created) = Stream::with(endpoint, watchers(0)).await;
    // Refused creates: a taken ID, an empty range.
    live.create(WatchCreateRequest { watch_id: 42, ..watcher(b"x", b"") }).await;
    created.push(live.created().await);
    live.create(watcher(b"d", b"c")).await;
    created.push(live.created().await);
    let sentinel_id = created[5].watch_id;

    for txn in writes(seed, 300) {
        kv.txn(txn).await.expect("txn");
    }
    kv.put(PutRequest { key: SENTINEL.to_vec(), value: b"end".to_vec(), ..Default::default() }).await.expect("put");
    let live_responses = until_sentinel(&mut live, sentinel_id).await;

    // Everything is synced now: a progress request reports the last revision.
    live.send(RequestUnion::ProgressRequest(WatchProgressRequest {})).await;
    let progress = loop {
        let r = live.next().await;
        if r.watch_id == -1 {
            break r;
        }
    };

    // History from revision 1 through the same watchers.
    let (mut old, _) = Stream::with(endpoint, watchers(1)).await;
    let counts = events_by_watcher(&live_responses).into_iter().map(|(id, e)| (id, e.len())).collect();
    let history = until_counts(&mut old, &counts).await;

    // Compact at 100, then watch from 50 (canceled) and from 100 (fine).
    kv.compact(CompactionRequest { revision: 100, physical: true }).await.expect("compact");
    let (mut late, mut compacted) =
        Stream::with(endpoint, vec![WatchCreateRequest { start_revision: 50, ..watcher(b"a", b"") }]).await;
    compacted.push(late.next().await);
    late.create(WatchCreateRequest { start_revision: 100, ..watcher(SENTINEL, b"") }).await;
    compacted.push(late.next().await);
    compacted.push(late.next().await);
    Run { created, live: live_responses, history, progress, compacted }
}

#[tokio::test]
async fn same_watch_responses_as_etcd_3_5() {
    let seed: u64 = std::env::var("DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261125);
    let Some((etcd, ferrocd)) = Member::etcd_and_ferrocd(&[]).await else { return };
    let want = run(&etcd.endpoint(), seed).await;
    let got = run(&ferrocd.endpoint(), seed).await;

    assert_eq!(got.created, want.created, "create responses differ");
    // The writes reach every kind of watcher.
    let live = events_by_watcher(&want.live);
    assert!(live.len() >= 5 && live.values().all(|e| !e.is_empty()), "some watcher saw nothing: {live:?}");
    // Each watcher's responses in order (etcd orders the watchers of one
    // revision by Go map iteration, which is random).
    let per_watcher = |rs: &[WatchResponse]| {
        let mut m: BTreeMap<i64, Vec<WatchResponse>> = BTreeMap::new();
        for r in rs {
            m.entry(r.watch_id).or_default().push(r.clone());
        }
        m
    };
    let (g, w) = (per_watcher(&got.live), per_watcher(&want.live));
    assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
    for (id, want) in &w {
        for (i, (g, w)) in g[id].iter().zip(want).enumerate() {
            assert_eq!(g, w, "live response #{i} of watcher {id} differs");
        }
        assert_eq!(g[id].len(), want.len(), "watcher {id}: live responses differ in number");
    }
    assert_eq!(got.progress, want.progress, "progress response differs");
    assert_eq!(got.history.keys().collect::<Vec<_>>(), want.history.keys().collect::<Vec<_>>());
    for (id, want) in &want.history {
        let got = &got.history[id];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "history event #{i} of watcher {id} differs");
        }
        assert_eq!(got.len(), want.len(), "watcher {id}: history differs in length");
    }
    assert_eq!(got.compacted, want.compacted, "compaction responses differ");
}
