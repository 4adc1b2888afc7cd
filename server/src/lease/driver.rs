//! The leader's lease duties (its lessor's, once primary): revoke expired
//! leases through raft, and checkpoint remaining TTLs through raft on an
//! interval and before a stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::proto::etcdserverpb::{LeaseCheckpointRequest, LeaseRevokeRequest};
use crate::proto::ferrocdpb::internal_request::Request;
use crate::server::EtcdServer;

/// How often expiry is checked (etcd's lessor checks every 500 ms).
const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Revocations proposed per check (etcd revokes at most 1000 leases a second).
const REVOKES_PER_CHECK: usize = 500;

pub async fn run(server: Arc<EtcdServer>, checkpoint_interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    let mut checkpoints = tokio::time::interval(checkpoint_interval);
    checkpoints.reset();
    loop {
        tokio::select! {
            _ = async { stop.wait_for(|stopped| *stopped).await.map(|_| ()) } => return,
            // Both duties fall to the primary lessor alone (see
            // `Lessor::is_primary`), and only while this member still leads
            // (a deposed leader's lessor stops being primary a moment later).
            _ = expiry.tick() => {
                if !server.is_leader() {
                    continue;
                }
                for id in server.lessor.take_expired(REVOKES_PER_CHECK) {
                    let server = server.clone();
                    tokio::spawn(async move {
                        tracing::info!(lease = format!("{id:x}"), "lease expired; revoking");
                        if let Err(e) = server.propose(Request::LeaseRevoke(LeaseRevokeRequest { id })).await {
                            tracing::warn!(lease = format!("{id:x}"), error = %e, "revoking an expired lease failed; will retry");
                        }
                    });
                }
            }
            _ = checkpoints.tick() => checkpoint(&server).await,
        }
    }
}

/// Records every lease's remaining TTL through raft, so that a restart
/// resumes the countdowns instead of starting them over.
pub async fn checkpoint(server: &EtcdServer) {
    if !server.is_leader() {
        return;
    }
    let checkpoints = server.lessor.checkpoints();
    if checkpoints.is_empty() {
        return;
    }
    let n = checkpoints.len();
    match server.propose(Request::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints })).await {
        Ok(_) => tracing::debug!(leases = n, "checkpointed lease TTLs"),
        Err(e) => tracing::warn!(error = %e, "lease checkpoint failed"),
    }
}
