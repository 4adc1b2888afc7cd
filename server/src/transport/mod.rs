//! The peer transport (etcd's `rafthttp`): one long-lived raft stream to
//! each peer carrying raft messages in order, reconnecting with back-off
//! (`outlet`, `sender`, `wire`, `receiver`); beside it, on the same port
//! (`port` sorts connections), a gRPC service for everything else. The raft
//! thread writes a message to the peer's socket only as far as the socket
//! takes it at once (`Outbound::send`), the rest waits for the peer's task:
//! a dead or slow peer never blocks it; what cannot wait is dropped and
//! raft is told the peer is unreachable. Peer URLs follow the membership.

mod header;
mod outlet;
pub mod port;
mod receiver;
mod sender;
pub mod service;
pub mod snapshot;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

pub use header::{PeerHeader, PROTOCOL_VERSION};
pub use sender::{open, Refused};
pub use snapshot::SnapshotSource;

use crate::error::EtcdError;
use crate::membership::Members;
use crate::raftnode::{Node, Outbound};

/// What a member says to one that was removed from the cluster.
pub(crate) const REMOVED: &str = "the member has been permanently removed from the cluster";

/// What the transport knows of one peer's link.
#[derive(Debug, Default)]
pub struct LinkState {
    /// The last connect failed: messages are dropped until one succeeds.
    pub down: AtomicBool,
    /// Connected without a break since then; None while not connected.
    since: Mutex<Option<Instant>>,
}

impl LinkState {
    pub fn active_since(&self) -> Option<Instant> {
        *self.since.lock()
    }
}

/// A peer client that stamps this member's header on every call.
pub type PeerClient = crate::proto::ferrocdpb::peer_client::PeerClient<InterceptedService<Channel, HeaderInterceptor>>;

#[derive(Clone)]
pub struct HeaderInterceptor(PeerHeader);

impl Interceptor for HeaderInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.0.write(req.metadata_mut());
        Ok(req)
    }
}

/// What members dial each other with when their peer URLs are `https://`.
pub type PeerTls = Arc<crate::tls::Reloading<rustls::ClientConfig>>;

/// A client for calls to the member at `url`, sent as `header.from`.
pub fn client(url: &str, header: PeerHeader, tls: Option<&PeerTls>) -> Result<PeerClient, EtcdError> {
    let (endpoint, connector) = sender::endpoint(url, tls).map_err(EtcdError::Internal)?;
    let channel = endpoint.connect_with_connector_lazy(connector);
    Ok(crate::proto::ferrocdpb::peer_client::PeerClient::with_interceptor(channel, HeaderInterceptor(header)))
}

struct Peer {
    outlet: Arc<outlet::Outlet>,
    /// For calls to the peer (forwarded requests), made on first use.
    client: Option<PeerClient>,
    link: Arc<LinkState>,
    urls: watch::Sender<Vec<String>>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Transport {
    header: PeerHeader,
    tls: Option<PeerTls>,
    node: OnceLock<Node>,
    snapshots: OnceLock<SnapshotSource>,
    peers: Mutex<HashMap<u64, Peer>>,
    runtime: tokio::runtime::Handle,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Transport {
    /// A transport for member `header.from`; call `follow` to give it peers
    /// and `attach` once the node runs.
    pub fn new(header: PeerHeader, tls: Option<PeerTls>, metrics: Arc<crate::metrics::Metrics>) -> Arc<Transport> {
        Arc::new(Transport {
            header,
            tls,
            node: OnceLock::new(),
            snapshots: OnceLock::new(),
            peers: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
            metrics,
        })
    }

    pub fn header(&self) -> &PeerHeader {
        &self.header
    }

    /// The node that steps what peers send and hears of unreachable ones,
    /// and where snapshot images for peers come from.
    pub fn attach(&self, node: Node, snapshots: SnapshotSource) {
        let _ = self.node.set(node);
        let _ = self.snapshots.set(snapshots);
    }

    fn node(&self) -> Option<&Node> {
        self.node.get()
    }

    /// Keeps one sender per other member, at the member's current peer URLs.
    pub fn follow(self: &Arc<Transport>, mut members: watch::Receiver<Arc<Members>>) {
        self.set_members(&members.borrow_and_update());
        let me = Arc::downgrade(self);
        self.runtime.spawn(async move {
            while members.changed().await.is_ok() {
                let Some(t) = me.upgrade() else { return };
                let current = members.borrow_and_update().clone();
                t.set_members(&current);
            }
        });
    }

    fn set_members(self: &Arc<Transport>, members: &Members) {
        let mut peers = self.peers.lock();
        peers.retain(|id, p| {
            let keep = members.members.contains_key(id);
            if !keep {
                p.task.abort();
            }
            keep
        });
        for (id, m) in &members.members {
            if *id == self.header.from || m.peer_urls.is_empty() {
                continue;
            }
            match peers.get_mut(id) {
                Some(p) => {
                    if *p.urls.borrow() != m.peer_urls {
                        p.client = None;
                        p.urls.send_replace(m.peer_urls.clone());
                    }
                }
                None => {
                    let sent = self.metrics.peer_sent_bytes.with_label_values(&[&format!("{id:x}")]);
                    let outlet = Arc::new(outlet::Outlet::new(sent));
                    let link = Arc::new(LinkState::default());
                    let (urls, urls_rx) = watch::channel(m.peer_urls.clone());
                    let task = self.runtime.spawn(sender::run(
                        Arc::downgrade(self),
                        *id,
                        urls_rx,
                        outlet.clone(),
                        link.clone(),
                    ));
                    peers.insert(*id, Peer { outlet, client: None, link, urls, task });
                }
            }
        }
    }

    /// A client to the leader, for requests only the leader carries out.
    pub fn to_leader(&self, leader: u64) -> Result<PeerClient, EtcdError> {
        if leader == 0 {
            return Err(EtcdError::NoLeader);
        }
        self.peer_client(leader).map_err(|_| EtcdError::NoLeader)
    }

    /// A client to member `id` (made on first use, then shared).
    pub fn peer_client(&self, id: u64) -> Result<PeerClient, EtcdError> {
        let mut peers = self.peers.lock();
        let p = peers.get_mut(&id).ok_or(EtcdError::MemberNotFound)?;
        if p.client.is_none() {
            let urls = p.urls.borrow().clone();
            let url = urls.first().ok_or(EtcdError::MemberNotFound)?;
            p.client = Some(client(url, self.header, self.tls.as_ref())?);
        }
        p.client.clone().ok_or(EtcdError::MemberNotFound)
    }

    /// When the link to `id` has been up without a break since, if it is up.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        self.peers.lock().get(&id).and_then(|p| p.link.active_since())
    }

    /// Stops every sender (the member is stopping).
    pub fn stop(&self) {
        for (_, p) in self.peers.lock().drain() {
            p.task.abort();
        }
    }

    /// The link to `peer` went up or down (etcd's active-peers gauge).
    fn link_changed(&self, peer: u64, up: bool) {
        let (local, remote) = (format!("{:x}", self.header.from), format!("{peer:x}"));
        self.metrics.peers_active.with_label_values(&[&local, &remote]).set(i64::from(up));
        if !up {
            self.metrics.peers_disconnected.with_label_values(&[&local, &remote]).inc();
        }
    }
}

impl Outbound for Arc<Transport> {
    fn send(&self, to: u64, msg: Vec<u8>, now: bool) -> bool {
        self.as_ref().queue(to, msg, now)
    }

    fn send_snapshot(&self, to: u64, msg: Vec<u8>) {
        self.runtime.spawn(snapshot::send(self.clone(), to, msg));
    }

    fn reachable(&self, to: u64) -> bool {
        self.peers.lock().get(&to).is_some_and(|p| !p.link.down.load(Ordering::Acquire))
    }
}

impl Transport {
    fn queue(&self, to: u64, msg: Vec<u8>, now: bool) -> bool {
        // The write may reach the socket: not under the peers' lock.
        let outlet = {
            let peers = self.peers.lock();
            let Some(p) = peers.get(&to) else {
                return false;
            };
            if p.link.down.load(Ordering::Acquire) {
                return false;
            }
            p.outlet.clone()
        };
        outlet.send(&msg, now)
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}
