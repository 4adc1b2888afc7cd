//! The Cluster service. A single member lists itself; membership changes
//! arrive with the peer transport.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;
use crate::server::EtcdServer;

pub struct ClusterService {
    server: Arc<EtcdServer>,
}

impl ClusterService {
    pub fn new(server: Arc<EtcdServer>) -> ClusterService {
        ClusterService { server }
    }

    fn members(&self) -> Vec<Member> {
        let m = &self.server.member;
        vec![Member {
            id: m.id,
            name: m.name.clone(),
            peer_ur_ls: m.peer_urls.clone(),
            client_ur_ls: m.client_urls.clone(),
            is_learner: false,
        }]
    }
}

fn not_built(what: &str) -> Status {
    Status::unimplemented(format!("ferrocd: Cluster.{what} is not implemented yet (single-member only)"))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_built("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(not_built("MemberRemove"))
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_built("MemberUpdate"))
    }

    async fn member_list(&self, req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        // Any user, with auth on (as etcd 3.5.29+).
        self.server.auth.check_identity(&self.server.auth.caller(req.metadata())?)?;
        if req.into_inner().linearizable {
            self.server.linearizable_barrier().await?;
        }
        Ok(Response::new(MemberListResponse { header: Some(self.server.header(0)), members: self.members() }))
    }

    async fn member_promote(
        &self,
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_built("MemberPromote"))
    }
}
