//! The peer service on `--listen-peer-urls`: snapshots from other
//! members, the membership for members that join, and the requests other
//! members hand to this one as leader.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::PeerHeader;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::*;
use crate::proto::ferrocdpb::peer_server::{Peer, PeerServer};
use crate::proto::ferrocdpb::{ClusterInfo, ClusterRequest, ProbeRequest, ProbeResponse, SnapshotAck, SnapshotChunk};
use crate::server::EtcdServer;

/// A member removed from the cluster is refused, and told why.
pub(super) fn refuse_removed(server: &EtcdServer, from: u64) -> Result<(), Status> {
    if server.membership.is_removed(from) {
        tracing::warn!(peer = format!("{from:x}"), "refused a removed member");
        return Err(Status::permission_denied(super::REMOVED));
    }
    Ok(())
}

pub struct PeerService {
    server: Arc<EtcdServer>,
}

pub fn server(server: Arc<EtcdServer>) -> PeerServer<PeerService> {
    PeerServer::new(PeerService { server }).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX)
}

impl PeerService {
    /// The caller's header, if it may talk to this member.
    fn admit<T>(&self, req: &Request<T>, allow_unknown_cluster: bool) -> Result<PeerHeader, Status> {
        let theirs = PeerHeader::read(req.metadata())?;
        self.server.transport.header().admit(&theirs, allow_unknown_cluster)?;
        refuse_removed(&self.server, theirs.from)?;
        Ok(theirs)
    }

    /// Requests forwarded to the leader: refused if leadership moved on
    /// meanwhile, so that a request never travels in circles.
    fn as_leader<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.admit(req, false)?;
        if !self.server.is_leader() {
            return Err(EtcdError::NotLeader.into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<SnapshotAck>, Status> {
        let from = self.admit(&req, false)?.from;
        super::snapshot::receive(&self.server, from, req.into_inner()).await?;
        Ok(Response::new(SnapshotAck {}))
    }

    async fn cluster(&self, req: Request<ClusterRequest>) -> Result<Response<ClusterInfo>, Status> {
        self.admit(&req, true)?;
        Ok(Response::new(ClusterInfo {
            cluster_id: self.server.cluster_id,
            membership: Some(self.server.membership.current().to_record()),
        }))
    }

    async fn member_add(&self, req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        self.as_leader(&req)?;
        self.server.member_add(req.into_inner()).await.map(Response::new)
    }

    async fn member_remove(&self, req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        self.as_leader(&req)?;
        self.server.member_remove(req.into_inner()).await.map(Response::new)
    }

    async fn member_update(&self, req: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        self.as_leader(&req)?;
        self.server.member_update(req.into_inner()).await.map(Response::new)
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.as_leader(&req)?;
        self.server.member_promote(req.into_inner()).await.map(Response::new)
    }

    async fn probe(&self, req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        self.admit(&req, false)?;
        Ok(Response::new(ProbeResponse {}))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.admit(&req, false)?;
        Ok(Response::new(self.server.hash_kv(req.into_inner().revision).await?))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.as_leader(&req)?;
        Ok(Response::new(self.server.lease_keep_alive(req.into_inner().id).await?))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.as_leader(&req)?;
        Ok(Response::new(self.server.lease_time_to_live(req.into_inner()).await?))
    }
}
