//! The Lock service (etcd's v3lock): clientv3's mutex, run by the server.
//! The lock key is `<name>/<lease in hex>`; the oldest key under `<name>/`
//! holds the lock, the others wait for every older one to go.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::concurrency::Local;
use crate::proto::etcdserverpb::RangeRequest;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::server::EtcdServer;

pub struct LockService {
    server: Arc<EtcdServer>,
}

impl LockService {
    pub fn new(server: Arc<EtcdServer>) -> LockService {
        LockService { server }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let local = Local::acting_for(&self.server, &req)?;
        let r = req.into_inner();
        let q = local.join_queue(&r.name, r.lease, b"").await?;
        let header = if q.first_rev.is_none_or(|rev| rev == q.rev) {
            q.header
        } else {
            local.wait_deletes(&q.prefix, q.rev - 1).await?;
            // The session may have expired while waiting.
            let mine = local.range(RangeRequest { key: q.key.clone(), ..Default::default() }).await?;
            if mine.kvs.is_empty() {
                return Err(Status::unknown("session expired"));
            }
            mine.header
        };
        q.cleanup.keep();
        Ok(Response::new(LockResponse { header, key: q.key }))
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let local = Local::acting_for(&self.server, &req)?;
        let deleted = local.delete(&req.into_inner().key).await?;
        Ok(Response::new(UnlockResponse { header: deleted.header }))
    }
}
