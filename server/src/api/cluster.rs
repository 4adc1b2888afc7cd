//! The Cluster service: the member list, and membership changes carried out
//! by the leader (`reconfig`).

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

    /// Membership changes need the root role when auth is on.
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let who = self.server.auth.caller(super::credentials(req))?;
        self.server.auth.check_admin(&who)?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        self.admin(&req)?;
        self.server.member_add(req.into_inner()).await.map(Response::new)
    }

    async fn member_remove(&self, req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admin(&req)?;
        self.server.member_remove(req.into_inner()).await.map(Response::new)
    }

    async fn member_update(&self, req: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admin(&req)?;
        self.server.member_update(req.into_inner()).await.map(Response::new)
    }

    async fn member_list(&self, req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        // Any user, with auth on (as etcd 3.5.29+).
        self.server.auth.check_identity(&self.server.auth.caller(super::credentials(&req))?)?;
        if req.into_inner().linearizable {
            self.server.linearizable_barrier().await?;
        }
        let members = self.server.members();
        Ok(Response::new(MemberListResponse { header: Some(self.server.header(0)), members }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admin(&req)?;
        self.server.member_promote(req.into_inner()).await.map(Response::new)
    }
}
