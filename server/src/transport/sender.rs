//! One peer's sender: connects to the peer's URLs in turn, keeps one raft
//! stream open for the peer's outlet (raft writes to it); on any failure it
//! tells raft the peer is unreachable and tries again after a back-off.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tonic::transport::Endpoint;

use super::outlet::Outlet;
use super::wire::{self, Frames};
use super::{LinkState, PeerHeader, PeerTls, Transport};
use crate::tls::{ClientTls, Conn, Connector};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A silent peer (cut off without a reset) is found out this fast.
const KEEPALIVE: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
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

/// Dials `url` and opens a raft stream on it; the peer's refusal is the error.
pub async fn open(url: &str, header: PeerHeader, tls: Option<&PeerTls>) -> Result<RaftStream, Refused> {
    let tls = tls.map(|t| t.clone() as Arc<dyn ClientTls>);
    let (connector, plain) = Connector::for_url(url, tls, CONNECT_TIMEOUT).map_err(Refused::Unreachable)?;
    let uri: http::Uri = plain.parse().map_err(|e| Refused::Unreachable(format!("bad peer URL {url:?}: {e}")))?;
    let conn = connector.dial(&uri).await.map_err(|e| Refused::Unreachable(format!("{url}: {e}")))?;
    let (read, mut write) = tokio::io::split(conn);
    let mut back = Answers(Frames::new(read));
    let admitted = async {
        let opened = async {
            write.write_all(&wire::opening(&header)).await?;
            write.flush().await
        };
        opened.await.map_err(|e| Refused::Unreachable(e.to_string()))?;
        back.heard().await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, admitted).await {
        Err(_) => Err(Refused::Unreachable(format!("{url}: no answer to the raft stream's opening"))),
        Ok(Err(Refused::Unreachable(e))) => Err(Refused::Unreachable(format!("{url}: {e}"))),
        Ok(Err(refused)) => Err(refused),
        Ok(Ok(())) => Ok(RaftStream { out: write, back }),
    }
}

/// Why a raft stream is not (or no longer) open.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Unreachable(String),
    /// The peer's own words.
    #[error("{0}")]
    By(String),
}

/// An open raft stream: raft messages out (framed, see `wire`),
/// keepalives' answers and refusals back; each half used on its own.
pub struct RaftStream {
    pub out: WriteHalf<Conn>,
    pub back: Answers,
}

/// A raft stream's reading half.
pub struct Answers(Frames<ReadHalf<Conn>>);

impl Answers {
    /// Waits for the peer's next word: Ok after a keepalive's answer, the
    /// reason when it refuses or the stream breaks.
    pub async fn heard(&mut self) -> Result<(), Refused> {
        match self.0.next().await {
            Ok(Some(frames)) => match frames.iter().find(|f| !f.is_empty()) {
                Some(reason) => Err(Refused::By(String::from_utf8_lossy(reason).into_owned())),
                None => Ok(()),
            },
            Ok(None) => Err(Refused::Unreachable("the peer closed the raft stream".into())),
            Err(e) => Err(Refused::Unreachable(e.to_string())),
        }
    }
}

pub(super) async fn run(
    transport: Weak<Transport>,
    peer: u64,
    urls: watch::Receiver<Vec<String>>,
    outlet: Arc<Outlet>,
    link: Arc<LinkState>,
) {
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
        let e = match open(&url, header, tls.as_ref()).await {
            Ok(raft) => {
                backoff = MIN_BACKOFF;
                stream(&transport, peer, &url, raft, &outlet, &link).await
            }
            Err(e) => e,
        };
        // A member removed before it applied its own removal learns it
        // from the peers that refuse it.
        if matches!(&e, Refused::By(reason) if reason == super::REMOVED) {
            if let Some(node) = transport.upgrade().as_ref().and_then(|t| t.node().cloned()) {
                node.removed_from_cluster();
            }
        }
        let was_up = link.since.lock().take().is_some();
        link.down.store(true, Ordering::Release);
        // What waited for a link that failed goes nowhere.
        outlet.detach();
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

/// Lets raft write to the peer through `outlet` (writing what the socket
/// did not take at once), keeps the stream alive and listens for the
/// peer's answers, until the stream fails.
async fn stream(
    transport: &Weak<Transport>,
    peer: u64,
    url: &str,
    raft: RaftStream,
    outlet: &Outlet,
    link: &Arc<LinkState>,
) -> Refused {
    let label = format!("{peer:x}");
    let RaftStream { out, mut back } = raft;
    outlet.attach(out);
    link.down.store(false, Ordering::Release);
    *link.since.lock() = Some(Instant::now());
    if let Some(t) = transport.upgrade() {
        t.link_changed(peer, true);
    }
    tracing::info!(peer = label, url, "connected to peer");
    // The peer answers every keepalive: silent this long, it is gone,
    // unless the keepalive still waits behind bytes the socket is taking.
    let silent = async {
        loop {
            match tokio::time::timeout(KEEPALIVE_TIMEOUT, back.heard()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return e,
                Err(_) if outlet.busy_within(KEEPALIVE_TIMEOUT) => {}
                Err(_) => return Refused::Unreachable(format!("{url}: silent for {KEEPALIVE_TIMEOUT:?}")),
            }
        }
    };
    tokio::pin!(silent);
    let drain = outlet.drain();
    tokio::pin!(drain);
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    let mut probe = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            e = &mut silent => return e,
            e = &mut drain => return Refused::Unreachable(format!("{url}: {e}")),
            _ = keepalive.tick() => {
                outlet.send(&[], false);
            }
            _ = probe.tick() => {
                if let Some(t) = transport.upgrade() {
                    tokio::spawn(measure_round_trip(t, peer));
                }
            }
        }
    }
}
