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
use tonic::transport::server::TcpIncoming;

use crate::alarm::Alarms;
use crate::api::response_budget::ResponseBudget;
use crate::apply::{Applier, ApplyTargets};
use crate::auth::AuthStore;
use crate::batched_io::BatchedIo;
use crate::bootstrap::{self, BootstrapError, DataDir};
use crate::config::{self, Config};
use crate::lease::{self, Lessor};
use crate::metrics::Metrics;
use crate::mvcc::Store;
use crate::raftnode::{self, NodeConfig, NodeError};
use crate::server::{proposal_ids, EtcdServer, Limits, MemberInfo};
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

/// Time to wait for a leader before reporting the member not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long in-flight client requests may finish during a stop. Clients
/// often keep idle connections open after GOAWAY, so this is also how long a
/// stop waits for them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn start(cfg: Config) -> Result<Etcd, EmbedError> {
    let members = cfg.validate()?;
    let data_dir = cfg.data_dir();
    let dirs = DataDir::new(&data_dir)?;
    let backend = dirs.backend.clone();
    let limits = cfg.batch_limits();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open(&backend).map(|s| s.with_batch_limits(limits)))
            .await?
            .map_err(BootstrapError::backend(&dirs.backend))?,
    );
    let id = bootstrap::identity(&cfg, &members, &store)?;
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
    let applier = Applier::new(ApplyTargets {
        store: store.clone(),
        alarms: alarms.clone(),
        wait: wait.clone(),
        db_size: db_size.clone(),
        watch_hub: watch_hub.clone(),
        lessor: lessor.clone(),
        auth: auth.clone(),
        backend_commit: metrics.backend_commit.clone(),
    });
    let wal_fsync = metrics.wal_fsync.clone();
    let node_cfg = NodeConfig {
        id: id.member_id,
        initial_voters: id.voters.clone(),
        tick: Duration::from_millis(cfg.heartbeat_interval),
        election_ticks: cfg.election_ticks(),
        snapshot_count: cfg.snapshot_count,
        catch_up_entries: cfg.snapshot_catchup_entries,
        wal_dir: dirs.wal.clone(),
        snap_dir: dirs.snap.clone(),
        on_fsync: Arc::new(move |took| wal_fsync.observe(took.as_secs_f64())),
    };
    let (node, node_thread) = tokio::task::spawn_blocking(move || raftnode::start(node_cfg, applier)).await??;
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
        snap_dir: dirs.snap.clone(),
        watch_progress_interval: cfg.watch_progress_notify_interval,
        election_timeout: Duration::from_millis(cfg.election_timeout),
    });

    // Bind first, so a taken port fails the start at once; serve once ready.
    let client_listeners = bind(&cfg.listen_client_urls).await?;
    let metrics_listeners = bind(&cfg.listen_metrics_urls).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut etcd =
        Etcd { server, client_addrs: Vec::new(), stop_tx, serving: Vec::new(), node_thread: Some(node_thread) };
    etcd.wait_ready().await?;
    // The WAL is replayed now: lease timing starts from what the store holds.
    etcd.server.lessor.promote(etcd.server.store.leases());
    if let Some(retention) = cfg.auto_compaction()? {
        etcd.serving.push(tokio::spawn(crate::compactor::run(etcd.server.clone(), retention, stop_rx.clone())));
    }
    etcd.serving.push(tokio::spawn(lease::driver::run(
        etcd.server.clone(),
        cfg.experimental_lease_checkpoint_interval,
        stop_rx.clone(),
    )));
    for (listener, bound) in client_listeners {
        etcd.client_addrs.push(bound);
        etcd.serving.push(tokio::spawn(serve_clients(etcd.server.clone(), listener, stop_rx.clone())));
        tracing::info!(address = %bound, "serving client traffic (gRPC and HTTP)");
    }
    for (listener, bound) in metrics_listeners {
        etcd.serving.push(tokio::spawn(serve_http(etcd.server.clone(), listener, stop_rx.clone())));
        tracing::info!(address = %bound, "serving /health, /livez, /readyz, /version");
    }
    tracing::info!("ready to serve client requests");
    Ok(etcd)
}

async fn bind(urls: &[String]) -> Result<Vec<(TcpListener, SocketAddr)>, EmbedError> {
    let mut out = Vec::new();
    for url in urls {
        for addr in config::listen_addrs(url)? {
            let listener = TcpListener::bind(addr).await.map_err(|source| EmbedError::Listen { addr, source })?;
            let bound = listener.local_addr().map_err(|source| EmbedError::Listen { addr, source })?;
            out.push((listener, bound));
        }
    }
    Ok(out)
}

async fn serve_http(server: Arc<EtcdServer>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    if let Err(e) = axum::serve(listener, crate::http::router(server)).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

async fn serve_clients(server: Arc<EtcdServer>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
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
        // The builder's tcp_nodelay only covers listeners tonic binds itself;
        // without it small responses wait out Nagle + delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(move |conn| conn.map(|io| BatchedIo::new(io, ResponseBudget::new(unread)))),
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
    /// Ready once a leader is known and everything committed is applied.
    async fn wait_ready(&self) -> Result<(), EmbedError> {
        let status = self.server.node.status();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if status.is_stopped() {
                return Err(EmbedError::NotReady("the raft node stopped".into()));
            }
            if status.leader() != 0 && status.applied_index() >= status.commit_index() && status.commit_index() > 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EmbedError::NotReady(format!("no leader after {READY_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
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
        let _ = self.stop_tx.send(true);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, futures::future::join_all(self.serving.drain(..))).await;
        self.server.node.stop().await;
        self.node_failed().await
    }
}
