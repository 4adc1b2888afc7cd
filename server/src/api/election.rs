//! The Election service (etcd's v3election): clientv3's election, run by
//! the server. Candidates are keys `<name>/<lease in hex>`; the oldest leads.
//! Errors are etcd's: plain messages with gRPC code Unknown.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::concurrency::{create_rev_is, first_created, prefix_end, Local, LocalWatch};
use crate::proto::etcdserverpb::{request_op, DeleteRangeRequest, PutRequest, RequestOp, ResponseHeader, TxnRequest};
use crate::proto::mvccpb::event::EventType;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::*;
use crate::server::EtcdServer;

const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER: &str = "\"leader\" field must be provided";

pub struct ElectionService {
    server: Arc<EtcdServer>,
}

impl ElectionService {
    pub fn new(server: Arc<EtcdServer>) -> ElectionService {
        ElectionService { server }
    }
}

/// Runs `op` only while `leader` still holds its key (same creation revision).
async fn as_leader(
    local: &Local,
    leader: &LeaderKey,
    op: request_op::Request,
) -> Result<Option<ResponseHeader>, Status> {
    let resp = local
        .txn(TxnRequest {
            compare: vec![create_rev_is(&leader.key, leader.rev)],
            success: vec![RequestOp { request: Some(op) }],
            failure: Vec::new(),
        })
        .await?;
    if !resp.succeeded {
        return Err(Status::unknown(NOT_LEADER));
    }
    Ok(resp.header)
}

async fn proclaim_as(local: &Local, leader: &LeaderKey, value: &[u8]) -> Result<Option<ResponseHeader>, Status> {
    let put = PutRequest { key: leader.key.clone(), value: value.to_vec(), lease: leader.lease, ..Default::default() };
    as_leader(local, leader, request_op::Request::RequestPut(put)).await
}

/// Sends the leader, then each new value of it, then the next leader, ...
/// (clientv3's `Election.Observe`), until the client goes away.
async fn observe(
    local: Local,
    prefix: Vec<u8>,
    tx: mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), Status> {
    let send = |header, kv| {
        let tx = tx.clone();
        async move { tx.send(Ok(LeaderResponse { header, kv: Some(kv) })).await.map_err(|_| Status::cancelled("gone")) }
    };
    loop {
        let first = local.range(first_created(&prefix)).await?;
        let (mut header, kv) = match first.kvs.into_iter().next() {
            Some(kv) => (first.header.unwrap_or_default(), kv),
            None => {
                // No leader yet: the first put under the prefix.
                let rev = first.header.as_ref().map_or(0, |h| h.revision);
                let mut w = LocalWatch::start(&local, &prefix, &prefix_end(&prefix), rev, false).await?;
                loop {
                    let resp = w.next().await?;
                    if let Some(kv) =
                        resp.events.into_iter().filter(|e| e.r#type == EventType::Put as i32).find_map(|e| e.kv)
                    {
                        let mut h = resp.header.unwrap_or_default();
                        h.revision = kv.mod_revision;
                        break (h, kv);
                    }
                }
            }
        };
        send(Some(header), kv.clone()).await?;
        let mut w = LocalWatch::start(&local, &kv.key, b"", header.revision + 1, false).await?;
        'leader: loop {
            let resp = w.next().await?;
            if let Some(h) = resp.header {
                header = h;
            }
            for e in resp.events {
                if e.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                if let Some(kv) = e.kv {
                    send(Some(header), kv).await?;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let local = Local::acting_for(&self.server, &req)?;
        let r = req.into_inner();
        let q = local.join_queue(&r.name, r.lease, &r.value).await?;
        let leader = LeaderKey { name: r.name, key: q.key.clone(), rev: q.rev, lease: q.lease };
        // Campaigning again with the same lease keeps the key, with the new value.
        if q.existing.is_some_and(|kv| kv.value != r.value) {
            proclaim_as(&local, &leader, &r.value).await?;
        }
        local.wait_deletes(&q.prefix, q.rev - 1).await?;
        q.cleanup.keep();
        Ok(Response::new(CampaignResponse { header: q.header, leader: Some(leader) }))
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let local = Local::acting_for(&self.server, &req)?;
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let header = proclaim_as(&local, &leader, &r.value).await?;
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let local = Local::acting_for(&self.server, &req)?;
        let prefix = [req.into_inner().name.as_slice(), b"/"].concat();
        let resp = local.range(first_created(&prefix)).await?;
        let kv = resp.kvs.into_iter().next().ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Response::new(LeaderResponse { header: resp.header, kv: Some(kv) }))
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let local = Local::acting_for(&self.server, &req)?;
        let prefix = [req.into_inner().name.as_slice(), b"/"].concat();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            if let Err(e) = observe(local, prefix, tx.clone()).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let local = Local::acting_for(&self.server, &req)?;
        let leader = req.into_inner().leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let delete = DeleteRangeRequest { key: leader.key.clone(), ..Default::default() };
        // As clientv3: resigning when no longer leader is not an error.
        let header = match as_leader(&local, &leader, request_op::Request::RequestDeleteRange(delete)).await {
            Err(e) if e.message() == NOT_LEADER => Some(self.server.header(0)),
            other => other?,
        };
        Ok(Response::new(ResignResponse { header }))
    }
}
