//! The Lease service. Grant, revoke (and checkpoints) go through raft; the
//! leader answers keepalives, time-to-live and the lease list from its lessor.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::expect;
use crate::apply::ApplyResponse;
use crate::auth::{Credentials, StreamCredentials};
use crate::error::EtcdError;
use crate::proto::authpb::permission::Type;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::*;
use crate::proto::ferrocdpb::internal_request::Request as Internal;
use crate::server::EtcdServer;

/// Keepalive responses a slow client may have waiting.
const KEEPALIVE_QUEUE: usize = 16;

pub struct LeaseService {
    server: Arc<EtcdServer>,
}

impl LeaseService {
    pub fn new(server: Arc<EtcdServer>) -> LeaseService {
        LeaseService { server }
    }
}

/// With auth on, a keepalive needs WRITE on every key of the lease.
fn may_renew(server: &EtcdServer, credentials: Credentials<'_>, id: i64) -> Result<(), EtcdError> {
    if !server.auth.is_enabled() {
        return Ok(());
    }
    let who = server.auth.caller(credentials)?;
    server.auth.check_identity(&who)?;
    server.auth.check_keys(&who, &server.lease_keys(id), Type::Write)
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        self.server.auth.check_identity(&who)?;
        let mut r = req.into_inner();
        // No ID given: the server picks one.
        if r.id == 0 {
            r.id = self.server.new_lease_id();
        }
        let applied = self.server.propose_as(who, Internal::LeaseGrant(r)).await?;
        let mut resp = expect(applied, |a| if let ApplyResponse::LeaseGrant(g) = a { Some(g) } else { None })?;
        self.server.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        self.server.auth.check_identity(&who)?;
        let applied = self.server.propose_as(who, Internal::LeaseRevoke(req.into_inner())).await?;
        let mut resp = expect(applied, |a| if let ApplyResponse::LeaseRevoke(r) = a { Some(r) } else { None })?;
        self.server.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let credentials = StreamCredentials::new(super::credentials(&req));
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE);
        let server = self.server.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                // Keeping keys alive is writing them (as etcd 3.5.9+); a
                // refusal ends the stream with the error.
                let resp = match may_renew(&server, credentials.get(), r.id) {
                    Ok(()) => server.lease_keep_alive(r.id).await,
                    Err(e) => Err(Status::from(e)),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        self.server.auth.check_identity(&who)?;
        let r = req.into_inner();
        // Naming a lease's keys shows them: READ on each (as etcd 3.5.9+).
        if r.keys && self.server.auth.is_enabled() {
            self.server.linearizable_barrier().await?;
            self.server.auth.check_keys(&who, &self.server.lease_keys(r.id), Type::Read)?;
        }
        Ok(Response::new(self.server.lease_time_to_live(r).await?))
    }

    async fn lease_leases(&self, req: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        self.server.auth.check_identity(&who)?;
        self.server.linearizable_barrier().await?;
        let ids = self.server.lease_ids();
        // Listing leases shows what holds keys: READ on every attached key (as etcd 3.5.9+).
        if self.server.auth.is_enabled() {
            for id in &ids {
                self.server.auth.check_keys(&who, &self.server.lease_keys(*id), Type::Read)?;
            }
        }
        let leases = ids.into_iter().map(|id| LeaseStatus { id }).collect();
        Ok(Response::new(LeaseLeasesResponse { header: Some(self.server.header(0)), leases }))
    }
}
