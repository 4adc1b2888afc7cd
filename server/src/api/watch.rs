//! The Watch service: one task per client stream (see `watch::stream`).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::EtcdError;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchRequest, WatchResponse};
use crate::server::EtcdServer;
use crate::watch::stream::{StreamConfig, WatchStream};

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
        max_response_bytes: s.limits.max_request_bytes,
        progress_interval: s.watch_progress_interval,
        require_leader,
        leader_check_interval: s.election_timeout,
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
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let stream =
            WatchStream::new(s.clone(), s.watch_hub.clone(), s.store.clone(), stream_config(s, require_leader), tx);
        tokio::spawn(stream.run(req.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
