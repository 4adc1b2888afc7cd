//! Starts and stops a whole member: bootstrap, the raft node, the client
//! listeners, readiness, and a graceful stop.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::alarm::Alarms;
use crate::api::response_budget::ResponseBudget;
use crate::apply::{Applier, ApplyTargets};
use crate::auth::AuthStore;
use crate::batched_io::BatchedIo;
use crate::bootstrap::{self, BootstrapError, DataDir};
use crate::config::{self, Config};
use crate::lease::{self, Lessor};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::mvcc::Store;
use crate::raftnode::{self, NodeConfig, NodeError};
use crate::server::{proposal_ids, EtcdServer, Limits, MemberInfo};
use crate::tls::{self, Incoming, Tls};
use crate::transport::{PeerHeader, SnapshotSource, Transport};
use crate::wait::Wait;
use crate::watch::WatchHub;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("the member did not become ready: {0}")]
    NotReady(String),
    #[error(
        "this member's data differs from a peer's at the same revision (initial corruption check): remove \
         this member, wipe its data dir and add it back"
    )]
    Corrupt,
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    NeedsTls(String),
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub struct Etcd {
    pub server: Arc<EtcdServer>,
    pub client_addrs: Vec<SocketAddr>,
    stop_tx: watch::Sender<bool>,
    serving: Vec<JoinHandle<()>>,
    node_thread: Option<std::thread::JoinHandle<Result<(), NodeError>>>,
}

/// How long in-flight client requests may finish during a stop. Clients
/// often keep idle connections open after GOAWAY, so this is also how long a
/// stop waits for them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn start(cfg: Config) -> Result<Etcd, EmbedError> {
    let members = cfg.validate()?;
    let data_dir = cfg.data_dir();
    let tls = load_tls(&cfg, &members)?;
    let dirs = DataDir::new(&data_dir)?;
    let backend = dirs.backend.clone();
    let limits = cfg.batch_limits();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open(&backend).map(|s| s.with_batch_limits(limits)))
            .await?
            .map_err(BootstrapError::backend(&dirs.backend))?,
    );
    let membership = Arc::new(Membership::load(&store).map_err(BootstrapError::backend(&dirs.backend))?);
    // Peers are served before anything waits on them (a joining member's
    // founders are asked for the cluster first, though).
    let peer_listeners = bind(&cfg.listen_peer_urls).await?;
    let id = bootstrap::identity(&cfg, &members, &store, &membership, tls.peer_client.as_ref()).await?;
    membership.set_local(id.member_id);
    tracing::info!(
        name = %cfg.name,
        data_dir = %data_dir.display(),
        member_id = format!("{:x}", id.member_id),
        cluster_id = format!("{:x}", id.cluster_id),
        revision = store.current_rev(),
        applied_index = store.consistent_index(),
        keys = store.key_count(),
        "opened backend"
    );
    let alarms = Arc::new(Alarms::load(&store).map_err(BootstrapError::backend(&dirs.backend))?);
    let wait = Arc::new(Wait::default());
    let db_size = Arc::new(AtomicU64::new(0));
    let metrics = Arc::new(Metrics::new().map_err(|e| EmbedError::Metrics(e.to_string()))?);
    let watch_hub = Arc::new(WatchHub::new(store.current_rev()));
    let lessor = Arc::new(Lessor::new(cfg.min_lease_ttl()));
    let auth = Arc::new(
        AuthStore::load(&store, Duration::from_secs(cfg.auth_token_ttl), cfg.bcrypt_cost)
            .map_err(BootstrapError::backend(&dirs.backend))?,
    );
    // Leases exist on every member (the applier keeps them); only the
    // leader counts them down (`lease::leader::follow_leadership`).
    lessor.promote(store.leases());
    let transport =
        Transport::new(PeerHeader::new(id.cluster_id, id.member_id), tls.peer_client.clone(), metrics.clone());
    transport.follow(membership.watch());
    let applier = Applier::new(ApplyTargets {
        store: store.clone(),
        alarms: alarms.clone(),
        wait: wait.clone(),
        db_size: db_size.clone(),
        watch_hub: watch_hub.clone(),
        lessor: lessor.clone(),
        auth: auth.clone(),
        membership: membership.clone(),
        backend_commit: metrics.backend_commit.clone(),
    });
    let wal_fsync = metrics.wal_fsync.clone();
    let node_cfg = NodeConfig {
        id: id.member_id,
        initial_members: id.initial_members,
        force_new_cluster: cfg.force_new_cluster,
        tick: Duration::from_millis(cfg.heartbeat_interval),
        election_ticks: cfg.election_ticks(),
        snapshot_count: cfg.snapshot_count,
        catch_up_entries: cfg.snapshot_catchup_entries,
        wal_dir: dirs.wal.clone(),
        snap_dir: dirs.snap.clone(),
        on_fsync: Arc::new(move |took| wal_fsync.observe(took.as_secs_f64())),
        outbound: Arc::new(transport.clone()),
    };
    let (node, node_thread) = tokio::task::spawn_blocking(move || raftnode::start(node_cfg, applier)).await??;
    let image_store = store.clone();
    let write_image: crate::transport::snapshot::ImageWriter = Arc::new(move |file: &mut std::fs::File| {
        let mut out = std::io::BufWriter::new(file);
        let info = image_store.snapshot(&mut out).map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
        Ok(info.size)
    });
    transport.attach(node.clone(), SnapshotSource { dir: dirs.snap.clone(), write_image });
    let limits = Limits {
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops as usize,
        quota_bytes: cfg.quota_bytes(),
        max_concurrent_streams: cfg.max_concurrent_streams,
        max_unread_response_bytes: match cfg.max_unread_response_bytes {
            0 => u64::MAX,
            n => n,
        },
        // etcd's request timeout: 5 s plus two election timeouts.
        request_timeout: Duration::from_secs(5) + 2 * Duration::from_millis(cfg.election_timeout),
        max_learners: cfg.experimental_max_learners,
        strict_reconfig_check: cfg.strict_reconfig_check,
    };
    let member = MemberInfo {
        id: id.member_id,
        name: cfg.name.clone(),
        peer_urls: cfg.initial_advertise_peer_urls.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
    };
    let next_id = proposal_ids(id.member_id);
    let server = Arc::new(EtcdServer {
        cluster_id: id.cluster_id,
        member,
        limits,
        store,
        alarms,
        node,
        wait,
        db_size,
        next_id,
        watch_hub,
        lessor,
        auth,
        metrics,
        membership,
        transport,
        snap_dir: dirs.snap.clone(),
        watch_progress_interval: cfg.watch_progress_notify_interval,
        election_timeout: Duration::from_millis(cfg.election_timeout),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut etcd =
        Etcd { server, client_addrs: Vec::new(), stop_tx, serving: Vec::new(), node_thread: Some(node_thread) };
    for (listener, bound, https) in peer_listeners {
        let incoming = tls::incoming(listener, tls.peer_server.clone().filter(|_| https));
        etcd.serving.push(tokio::spawn(serve_peers(etcd.server.clone(), incoming, stop_rx.clone())));
        tracing::info!(address = %bound, https, "serving peer traffic");
    }
    if cfg.experimental_initial_corrupt_check {
        initial_corrupt_check(&etcd.server).await?;
    }
    // Bind first, so a taken port fails the start at once.
    let client_listeners = bind(&cfg.listen_client_urls).await?;
    let metrics_listeners = bind(&cfg.listen_metrics_urls).await?;
    if let Some(retention) = cfg.auto_compaction()? {
        etcd.serving.push(tokio::spawn(crate::compactor::run(etcd.server.clone(), retention, stop_rx.clone())));
    }
    etcd.serving.push(tokio::spawn(lease::driver::run(
        etcd.server.clone(),
        cfg.experimental_lease_checkpoint_interval,
        stop_rx.clone(),
    )));
    etcd.serving.push(tokio::spawn(lease::leader::follow_leadership(etcd.server.clone(), stop_rx.clone())));
    if !cfg.experimental_corrupt_check_time.is_zero() {
        let every = cfg.experimental_corrupt_check_time;
        etcd.serving.push(tokio::spawn(crate::corruption::run(etcd.server.clone(), every, stop_rx.clone())));
    }
    // Clients are served at once, as etcd's are: without a leader they get
    // etcd's "no leader" errors, and /health says false.
    let client_tls = |https: bool| tls.client.clone().filter(|_| https);
    for (listener, bound, https) in client_listeners {
        etcd.client_addrs.push(bound);
        let incoming = tls::incoming(listener, client_tls(https));
        etcd.serving.push(tokio::spawn(serve_clients(etcd.server.clone(), incoming, stop_rx.clone())));
        tracing::info!(address = %bound, https, "serving client traffic (gRPC and HTTP)");
    }
    for (listener, bound, https) in metrics_listeners {
        let incoming = tls::incoming(listener, client_tls(https));
        etcd.serving.push(tokio::spawn(serve_http(etcd.server.clone(), incoming, stop_rx.clone())));
        tracing::info!(address = %bound, https, "serving /health, /livez, /readyz, /version");
    }
    etcd.serving.push(tokio::spawn(announce_ready(etcd.server.clone(), stop_rx.clone())));
    Ok(etcd)
}

/// Publishes this member's name and client URLs once a leader exists, and
/// says in the log while there is none.
async fn announce_ready(server: Arc<EtcdServer>, mut stop: watch::Receiver<bool>) {
    let started = tokio::time::Instant::now();
    let mut leader = server.node.status().watch_leader();
    loop {
        if *leader.borrow_and_update() != 0 {
            break;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = leader.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(NO_LEADER_LOG_EVERY) => {
                tracing::warn!(waited = ?started.elapsed(), "no leader yet: waiting for peers (clients get \"no leader\")");
            }
        }
    }
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = server.publish_attributes() => tracing::info!("ready to serve client requests"),
    }
}

/// How long the initial corruption check waits for a leader.
const INITIAL_CHECK_WAIT: Duration = Duration::from_secs(30);

/// etcd's initial corruption check, once this member has caught up with
/// the leader; skipped (with a warning) when no leader comes in time.
async fn initial_corrupt_check(server: &EtcdServer) -> Result<(), EmbedError> {
    let deadline = tokio::time::Instant::now() + INITIAL_CHECK_WAIT;
    while !(server.has_leader() && server.raft_barrier().await.is_ok()) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("no leader in time: skipping the initial corruption check");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !server.initial_corrupt_check().await {
        return Err(EmbedError::Corrupt);
    }
    tracing::info!("initial corruption check passed");
    Ok(())
}

/// How often a member without a leader says so.
const NO_LEADER_LOG_EVERY: Duration = Duration::from_secs(5);

async fn serve_peers(server: Arc<EtcdServer>, incoming: Incoming, mut stop: watch::Receiver<bool>) {
    let calls = crate::transport::port::sort(server.clone(), incoming, stop.clone());
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)))
        .add_service(crate::transport::service::server(server))
        .serve_with_incoming_shutdown(calls, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "peer server failed");
    }
}

/// Binds every URL's address; each comes with whether it is `https://`.
async fn bind(urls: &[String]) -> Result<Vec<(TcpListener, SocketAddr, bool)>, EmbedError> {
    let mut out = Vec::new();
    for url in urls {
        for addr in config::listen_addrs(url)? {
            let listener = TcpListener::bind(addr).await.map_err(|source| EmbedError::Listen { addr, source })?;
            let bound = listener.local_addr().map_err(|source| EmbedError::Listen { addr, source })?;
            out.push((listener, bound, config::is_https(url)));
        }
    }
    Ok(out)
}

/// Both planes' TLS from the flags; an `https://` URL of a plane without
/// certificates is refused, as etcd refuses it.
fn load_tls(cfg: &Config, members: &[config::InitialMember]) -> Result<Tls, EmbedError> {
    let hosts = |lists: &[&[String]]| -> Vec<String> {
        let mut hosts: Vec<String> = lists
            .iter()
            .flat_map(|l| l.iter())
            .filter_map(|u| url::Url::parse(u).ok()?.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    };
    let dials_https = members.iter().flat_map(|m| &m.peer_urls).any(|u| config::is_https(u));
    let tls = Tls::load(
        &cfg.tls,
        &cfg.data_dir(),
        &hosts(&[&cfg.listen_client_urls, &cfg.advertise_client_urls]),
        &hosts(&[&cfg.listen_peer_urls, &cfg.initial_advertise_peer_urls]),
        dials_https,
    )?;
    let client_urls = cfg.listen_client_urls.iter().chain(&cfg.listen_metrics_urls);
    if let Some(url) = client_urls.filter(|u| config::is_https(u)).find(|_| tls.client.is_none()) {
        return Err(EmbedError::NeedsTls(format!(
            "TLS key/cert (--cert-file, --key-file) must be provided for client url {url} (or use --auto-tls)"
        )));
    }
    let peer_urls = cfg.listen_peer_urls.iter().chain(members.iter().flat_map(|m| &m.peer_urls));
    if let Some(url) = peer_urls.filter(|u| config::is_https(u)).find(|_| tls.peer_server.is_none()) {
        return Err(EmbedError::NeedsTls(format!(
            "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url {url} (or use --peer-auto-tls)"
        )));
    }
    Ok(tls)
}

async fn serve_http(server: Arc<EtcdServer>, incoming: Incoming, mut stop: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    if let Err(e) = axum::serve(incoming, crate::http::router(server)).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

async fn serve_clients(server: Arc<EtcdServer>, incoming: Incoming, mut stop: watch::Receiver<bool>) {
    let routes = crate::api::routes(server.clone());
    let unread = server.limits.max_unread_response_bytes;
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(server.limits.max_concurrent_streams)
        // HTTP/1 for /health, /version and friends on the client port.
        .accept_http1(true)
        // etcd's keepalive enforcement: pings no more often than every 5 s.
        .http2_keepalive_interval(Some(Duration::from_secs(7200)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_routes(routes)
        // Accepted sockets have TCP_NODELAY (`tls::incoming`): without it
        // small responses wait out Nagle + delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            incoming.map(move |conn| conn.map(|io| BatchedIo::new(io, ResponseBudget::new(unread)))),
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            },
        )
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "client server failed");
    }
}

impl Etcd {
    /// Resolves when a conf change removed this member from the cluster.
    pub fn removed(&self) -> impl std::future::Future<Output = ()> + 'static {
        let status = self.server.node.status().clone();
        async move {
            while !status.is_removed() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Resolves when the raft node stops on its own (a fatal error).
    pub async fn node_failed(&mut self) -> Result<(), EmbedError> {
        let Some(thread) = self.node_thread.take() else {
            return Ok(());
        };
        let result = tokio::task::spawn_blocking(move || thread.join()).await?;
        match result {
            Ok(r) => r.map_err(EmbedError::from),
            Err(_) => Err(EmbedError::NotReady("the raft thread panicked".into())),
        }
    }

    /// Stops serving (letting in-flight requests finish for a while), then
    /// stops the node, which makes the backend durable.
    pub async fn close(mut self) -> Result<(), EmbedError> {
        // Leases resume where they were after the restart.
        lease::driver::checkpoint(&self.server).await;
        self.server.hand_over_leadership().await;
        let _ = self.stop_tx.send(true);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, futures::future::join_all(self.serving.drain(..))).await;
        self.server.transport.stop();
        self.server.node.stop().await;
        self.node_failed().await
    }
}
