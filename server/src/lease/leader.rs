//! Lease calls that only the leader's lessor can answer (it alone counts
//! down TTLs): answered here on the leader, handed to the leader over the
//! peer transport anywhere else (etcd forwards them to its leader too).
//! Also the hand-over of the countdowns when leadership moves.

use std::future::Future;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

use crate::error::EtcdError;
use crate::proto::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use crate::proto::ferrocdpb::internal_request::Request as Internal;
use crate::server::{within_deadline, EtcdServer};
use crate::transport::PeerClient;

/// The pause between tries of a call the leader could not take (etcd's too).
const FORWARD_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

impl EtcdServer {
    /// One keepalive: the lease's TTL, or 0 when it does not exist (etcd's answer).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let deadline = Instant::now() + self.limits.request_timeout;
        let forwarded = self.on_leader(deadline, |mut leader| async move {
            leader.lease_keep_alive(LeaseKeepAliveRequest { id }).await
        });
        if let Some(mut resp) = forwarded.await? {
            resp.header = Some(self.header(0));
            return Ok(resp);
        }
        within_deadline(deadline, self.until_lessor_primary()).await?;
        // A lease granted through a follower is acknowledged once that
        // follower applied it, maybe before this leader did: as etcd's
        // leader, renew only once apply caught up with the commit index, so
        // that a keepalive right after a grant never finds no lease.
        within_deadline(deadline, self.node.apply_wait()).await?;
        let ttl = match self.lessor.renew(id) {
            Some(renewed) => {
                if renewed.clear_checkpoint {
                    let cp = LeaseCheckpoint { id, remaining_ttl: 0 };
                    let req = Internal::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints: vec![cp] });
                    if let Err(e) = self.propose(req).await {
                        tracing::warn!(lease = format!("{id:x}"), error = %e, "clearing a lease checkpoint failed");
                    }
                }
                renewed.ttl
            }
            None => 0,
        };
        Ok(LeaseKeepAliveResponse { header: Some(self.header(0)), id, ttl })
    }

    /// A lease's remaining and granted TTL (and keys when asked), as of a
    /// linearizable read; TTL -1 for an unknown lease, as etcd answers.
    pub async fn lease_time_to_live(&self, r: LeaseTimeToLiveRequest) -> Result<LeaseTimeToLiveResponse, Status> {
        let deadline = Instant::now() + self.limits.request_timeout;
        let forwarded = self.on_leader(deadline, |mut leader| async move { leader.lease_time_to_live(r).await });
        if let Some(mut resp) = forwarded.await? {
            resp.header = Some(self.header(0));
            return Ok(resp);
        }
        within_deadline(deadline, self.linearizable_barrier()).await?;
        within_deadline(deadline, self.until_lessor_primary()).await?;
        let keys = if r.keys { self.store.lease_keys(r.id) } else { Vec::new() };
        Ok(match self.lessor.time_to_live(r.id) {
            Some((ttl, granted_ttl)) => {
                LeaseTimeToLiveResponse { header: Some(self.header(0)), id: r.id, ttl, granted_ttl, keys }
            }
            None => LeaseTimeToLiveResponse { header: Some(self.header(0)), id: r.id, ttl: -1, ..Default::default() },
        })
    }

    /// A lease call's answer from the leader, or None when this member
    /// leads and answers itself. As etcd's follower does, a call the leader
    /// cannot take now (no leader yet, the leader unreachable or no longer
    /// leading) is tried again, on whoever leads by then, until the request
    /// timeout (`deadline`, which the call's answer here also keeps):
    /// clients renewing through a follower ride out an election.
    async fn on_leader<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<Option<T>, Status>
    where
        F: Fn(PeerClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        loop {
            if self.is_leader() {
                return Ok(None);
            }
            let leader = self.transport.to_leader(self.node.status().leader());
            if let Ok(client) = leader {
                match tokio::time::timeout_at(deadline, call(client)).await {
                    Ok(Ok(resp)) => return Ok(Some(resp.into_inner())),
                    Ok(Err(status)) if is_final(&status) => return Err(status),
                    Ok(Err(_)) | Err(_) => {}
                }
            }
            if Instant::now() + FORWARD_RETRY >= deadline {
                let unknown = self.node.status().leader() == 0;
                return Err(if unknown { EtcdError::NoLeader } else { EtcdError::Timeout }.into());
            }
            tokio::time::sleep(FORWARD_RETRY).await;
        }
    }

    /// A leader answers for leases once its lessor took the countdowns over
    /// (`follow_leadership`), as etcd's leader answers once its lessor is
    /// primary: a renewal before the takeover would be lost to it.
    async fn until_lessor_primary(&self) -> Result<(), EtcdError> {
        self.lessor.until_primary().await;
        Ok(())
    }
}

/// Whether a forwarded call's error is the answer to it rather than a
/// failure to reach a leader that takes it (a broken link shows as
/// Unavailable, Unknown, Cancelled or Internal; a leader that lost
/// leadership says "not leader"). etcd's follower too retries everything
/// but the leader's answers.
fn is_final(status: &Status) -> bool {
    use tonic::Code::*;
    match status.code() {
        FailedPrecondition => status.message() != EtcdError::NotLeader.to_string(),
        NotFound | InvalidArgument | PermissionDenied | Unauthenticated | OutOfRange | ResourceExhausted => true,
        _ => false,
    }
}

/// Gives the lessor's countdowns to whoever leads: a member that becomes
/// leader takes the leases over once it has applied what earlier leaders
/// committed (each resumes from its checkpointed remaining TTL), so that no
/// lease expires early or lives a whole new TTL.
pub async fn follow_leadership(server: std::sync::Arc<EtcdServer>, mut stop: watch::Receiver<bool>) {
    let mut leader = server.node.status().watch_leader();
    let mut leading = false;
    loop {
        let now_leading = *leader.borrow_and_update() == server.member.id;
        if !now_leading {
            server.lessor.set_primary(false);
        }
        if now_leading && !leading {
            // A read barrier passes once this leader committed an entry of
            // its own term and applied everything before it.
            match server.raft_barrier().await {
                Ok(()) => {
                    server.lessor.promote(server.store.leases());
                    server.lessor.set_primary(true);
                    tracing::info!("became leader: took over lease countdowns");
                }
                Err(e) => {
                    // Leases are not answered for until the takeover: try again.
                    tracing::warn!(error = %e, "became leader but could not catch up; leases wait");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => continue,
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
        leading = now_leading && server.is_leader();
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
