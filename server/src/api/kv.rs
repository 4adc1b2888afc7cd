//! The KV service: reads are served locally after a read barrier (or at once
//! when serializable); writes go through raft.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{expect, response_budget, validate};
use crate::apply::{is_txn_read_only, is_txn_serializable, ApplyResponse};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::proto::ferrocdpb::internal_request::Request as Internal;
use crate::server::EtcdServer;

pub struct KvService {
    server: Arc<EtcdServer>,
}

impl KvService {
    pub fn new(server: Arc<EtcdServer>) -> KvService {
        KvService { server }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        let budget = response_budget::of(&req);
        let r = req.into_inner();
        validate::check_range(&r)?;
        self.server.before_read(r.serializable).await?;
        self.server.auth.check_read(&who, &r.key, &r.range_end)?;
        response_budget::read(budget, self.server.limits.request_timeout, || Ok(self.server.range(&r)?)).await
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        let r = req.into_inner();
        validate::check_put(&r)?;
        let applied = self.server.propose_as(who, Internal::Put(r)).await?;
        let mut resp = expect(applied, |a| if let ApplyResponse::Put(p) = a { Some(p) } else { None })?;
        self.server.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        let r = req.into_inner();
        validate::check_delete(&r)?;
        let applied = self.server.propose_as(who, Internal::DeleteRange(r)).await?;
        let mut resp = expect(applied, |a| if let ApplyResponse::DeleteRange(d) = a { Some(d) } else { None })?;
        self.server.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        let budget = response_budget::of(&req);
        let r = req.into_inner();
        validate::check_txn(&r, self.server.limits.max_txn_ops)?;
        if is_txn_read_only(&r) {
            self.server.before_read(is_txn_serializable(&r)).await?;
            // Read-only: no puts, so no lease keys to look at.
            self.server.auth.check_txn(&who, &r, &|_| Vec::new())?;
            response_budget::read(budget, self.server.limits.request_timeout, || Ok(self.server.read_only_txn(&r)?))
                .await
        } else {
            let applied = self.server.propose_as(who, Internal::Txn(r)).await?;
            let mut resp = expect(applied, |a| if let ApplyResponse::Txn(t) = a { Some(t) } else { None })?;
            self.server.fill(&mut resp.header);
            Ok(response_budget::written(budget, resp))
        }
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        // Compaction is applied in full (index and backend) when its entry
        // applies, so `physical` needs no extra wait.
        // Compaction destroys history for everyone: root only (as etcd 3.5.28+).
        let who = self.server.auth.caller(super::credentials(&req))?;
        self.server.auth.check_admin(&who)?;
        let applied = self.server.propose_as(who, Internal::Compaction(req.into_inner())).await?;
        let mut resp = expect(applied, |a| if let ApplyResponse::Compaction(c) = a { Some(c) } else { None })?;
        self.server.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
