//! The Watch service: one task per client stream (see `watch::stream`).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::StreamCredentials;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use crate::server::EtcdServer;
use crate::watch::stream::{StreamConfig, WatchContext, WatchStream};

/// Responses a stream may have waiting for a slow client.
const OUT_QUEUE: usize = 128;

pub struct WatchService {
    server: Arc<EtcdServer>,
}

impl WatchService {
    pub fn new(server: Arc<EtcdServer>) -> WatchService {
        WatchService { server }
    }
}

/// The member's settings for one watch stream.
pub fn stream_config(s: &EtcdServer, require_leader: bool) -> StreamConfig {
    StreamConfig {
        // etcd's watch server splits at the gRPC receive limit, not at
        // --max-request-bytes itself.
        max_response_bytes: s.limits.max_request_bytes + super::GRPC_OVERHEAD_BYTES,
        progress_interval: s.watch_progress_interval,
        require_leader,
        leader_check_interval: s.election_timeout,
    }
}

/// The member as one client's watch stream sees it: each new watcher is
/// checked with the stream's token, as it is when the watcher is created.
struct Caller {
    server: Arc<EtcdServer>,
    credentials: StreamCredentials,
}

impl WatchContext for Caller {
    fn header(&self, rev: i64) -> ResponseHeader {
        WatchContext::header(self.server.as_ref(), rev)
    }

    fn has_leader(&self) -> bool {
        self.server.has_leader()
    }

    fn check_watch(&self, key: &[u8], range_end: &[u8]) -> Result<(), EtcdError> {
        let who = self.server.auth.caller(self.credentials.get())?;
        self.server.auth.check_read(&who, key, range_end)
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        // clientv3's WithRequireLeader sets this metadata.
        let require_leader = req.metadata().get("hasleader").is_some_and(|v| v == "true");
        if require_leader && !self.server.has_leader() {
            return Err(EtcdError::NoLeader.into());
        }
        let s = &self.server;
        let caller =
            Arc::new(Caller { server: s.clone(), credentials: StreamCredentials::new(super::credentials(&req)) });
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let stream =
            WatchStream::new(caller, s.watch_hub.clone(), s.store.clone(), stream_config(s, require_leader), tx);
        tokio::spawn(stream.run(req.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
