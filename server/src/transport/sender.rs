//! One peer's sender: connects to the peer's URLs in turn, keeps one raft
//! stream open and writes queued messages to it in batches; on any failure
//! it tells raft the peer is unreachable and tries again after a back-off.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use super::{LinkState, PeerTls, Transport};
use crate::proto::ferrocdpb::peer_client::PeerClient;
use crate::proto::ferrocdpb::RaftBatch;
use crate::tls::{ClientTls, Connector};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A silent peer (cut off without a reset) is found out this fast.
const KEEPALIVE: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes of messages sent in one batch.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How often a failing link is logged again.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A peer URL's endpoint, with the transport's timeouts and keepalives,
/// and the connector that dials it (with TLS for `https://`).
pub(super) fn endpoint(url: &str, tls: Option<&PeerTls>) -> Result<(Endpoint, Connector), String> {
    let tls = tls.map(|t| t.clone() as Arc<dyn ClientTls>);
    let (connector, plain) = Connector::for_url(url, tls, CONNECT_TIMEOUT)?;
    let endpoint = Endpoint::from_shared(plain)
        .map_err(|e| format!("bad peer URL {url:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok((endpoint, connector))
}

async fn connect(url: &str, tls: Option<&PeerTls>) -> Result<Channel, String> {
    let (endpoint, connector) = endpoint(url, tls)?;
    endpoint.connect_with_connector(connector).await.map_err(|e| format!("{url}: {e}"))
}

pub(super) async fn run(
    transport: Weak<Transport>,
    peer: u64,
    urls: watch::Receiver<Vec<String>>,
    queue: mpsc::Receiver<Vec<u8>>,
    link: Arc<LinkState>,
) {
    let queue = Arc::new(Mutex::new(Queue { generation: 0, rx: queue }));
    let mut backoff = MIN_BACKOFF;
    let mut logged: Option<Instant> = None;
    let mut attempt = 0usize;
    loop {
        let Some(t) = transport.upgrade() else { return };
        let header = *t.header();
        let tls = t.tls.clone();
        drop(t);
        let candidates = urls.borrow().clone();
        let url = candidates[attempt % candidates.len().max(1)].clone();
        attempt += 1;
        let outcome = match connect(&url, tls.as_ref()).await {
            Ok(channel) => {
                backoff = MIN_BACKOFF;
                stream(&transport, peer, &url, channel, header, &queue, &link).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            let was_up = link.since.lock().take().is_some();
            link.down.store(true, Ordering::Release);
            // What was queued for a link that failed goes nowhere.
            let mut queue = queue.lock();
            queue.generation += 1;
            while let Ok(msg) = queue.rx.try_recv() {
                link.queued_bytes.fetch_sub(msg.len() as u64, Ordering::AcqRel);
            }
            drop(queue);
            if let Some(t) = transport.upgrade() {
                if was_up {
                    t.link_changed(peer, false);
                }
                if let Some(node) = t.node() {
                    node.report_unreachable(peer);
                }
            }
            if was_up || logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                tracing::warn!(peer = format!("{peer:x}"), error = %e, "cannot reach peer; retrying");
                logged = Some(Instant::now());
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How often the round trip to a connected peer is measured (etcd's prober
/// too probes every few seconds).
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Times one Probe call to `peer` (etcd's `peer_round_trip_time_seconds`).
async fn measure_round_trip(transport: Arc<Transport>, peer: u64) {
    let Ok(mut client) = transport.peer_client(peer) else { return };
    let started = Instant::now();
    if client.probe(crate::proto::ferrocdpb::ProbeRequest {}).await.is_ok() {
        let label = format!("{peer:x}");
        transport.metrics.peer_round_trip.with_label_values(&[&label]).observe(started.elapsed().as_secs_f64());
    }
}

/// The queue of messages for one peer, shared by the streams opened to it
/// one after another. Each stream holds a generation: a stream that a newer
/// one replaced ends instead of taking the newer one's messages (or its
/// wake-ups: the queue keeps one waker, the last poller's).
struct Queue {
    generation: u64,
    rx: mpsc::Receiver<Vec<u8>>,
}

/// A raft stream's body: the transport writes what it takes straight from the
/// queue, in batches, without a task in between.
struct Outgoing {
    queue: Arc<Mutex<Queue>>,
    generation: u64,
    /// The empty batch that opens the stream.
    opening: Option<RaftBatch>,
    link: Arc<LinkState>,
    sent: prometheus::IntCounter,
}

impl Stream for Outgoing {
    type Item = RaftBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RaftBatch>> {
        let this = self.get_mut();
        if let Some(opening) = this.opening.take() {
            return Poll::Ready(Some(opening));
        }
        let mut queue = this.queue.lock();
        if queue.generation != this.generation {
            return Poll::Ready(None);
        }
        let Some(first) = ready!(queue.rx.poll_recv(cx)) else { return Poll::Ready(None) };
        let mut size = first.len();
        let mut messages = vec![first];
        while size < MAX_BATCH_BYTES {
            match queue.rx.try_recv() {
                Ok(m) => {
                    size += m.len();
                    messages.push(m);
                }
                Err(_) => break,
            }
        }
        this.link.queued_bytes.fetch_sub(size as u64, Ordering::AcqRel);
        this.sent.inc_by(size as u64);
        Poll::Ready(Some(RaftBatch { messages }))
    }
}

/// Streams queued messages to the peer until the stream fails.
async fn stream(
    transport: &Weak<Transport>,
    peer: u64,
    url: &str,
    channel: Channel,
    header: super::PeerHeader,
    queue: &Arc<Mutex<Queue>>,
    link: &Arc<LinkState>,
) -> Result<(), String> {
    let label = format!("{peer:x}");
    let Some(sent) = transport.upgrade().map(|t| t.metrics.peer_sent_bytes.with_label_values(&[&label])) else {
        return Ok(());
    };
    let generation = {
        let mut queue = queue.lock();
        queue.generation += 1;
        queue.generation
    };
    // The empty batch opens the stream at once, whether or not raft has
    // anything for this peer (followers seldom write to each other), so the
    // link counts as up as etcd's streams do.
    let body =
        Outgoing { queue: queue.clone(), generation, opening: Some(RaftBatch::default()), link: link.clone(), sent };
    let mut request = tonic::Request::new(body);
    header.write(request.metadata_mut());
    let mut client =
        PeerClient::new(channel).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX);
    let call = client.raft(request);
    tokio::pin!(call);
    link.down.store(false, Ordering::Release);
    *link.since.lock() = Some(Instant::now());
    if let Some(t) = transport.upgrade() {
        t.link_changed(peer, true);
    }
    tracing::info!(peer = label, url, "connected to peer");
    let mut probe = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            _ = probe.tick() => {
                if let Some(t) = transport.upgrade() {
                    tokio::spawn(measure_round_trip(t, peer));
                }
            }
            result = &mut call => {
                return Err(match result {
                    Ok(_) => format!("{url}: the peer ended the stream"),
                    Err(status) => {
                        // A member removed before it applied its own removal
                        // learns it from the peers that refuse it.
                        if status.code() == tonic::Code::PermissionDenied && status.message() == super::REMOVED {
                            if let Some(node) = transport.upgrade().as_ref().and_then(|t| t.node().cloned()) {
                                node.removed_from_cluster();
                            }
                        }
                        format!("{url}: {}", status.message())
                    }
                });
            }
        }
    }
}
