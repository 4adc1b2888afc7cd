//! What etcd's Lock and Election services stand on: etcd runs clientv3's
//! `concurrency` package (sessions, mutexes, elections) against itself. Here
//! the same keys, txns and waits run directly on this member's KV, lease and
//! watch, so a lock taken through the service and one taken by `etcdctl lock`
//! (client-side) exclude each other.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{expect, watch::stream_config};
use crate::apply::ApplyResponse;
use crate::auth::StreamCredentials;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::*;
use crate::proto::ferrocdpb::internal_request::Request as Internal;
use crate::proto::ferrocdpb::AuthHeader;
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::KeyValue;
use crate::server::EtcdServer;
use crate::watch::stream::WatchStream;

/// clientv3's default session TTL, used when a request names no lease.
const SESSION_TTL: i64 = 60;

/// The end of the range of keys starting with `prefix` (clientv3's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    RequestOp { request: Some(request_op::Request::RequestPut(put)) }
}

fn get_op(r: RangeRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(r)) }
}

pub fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: compare::CompareTarget::Create as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// The oldest (by creation) key under `prefix`: who holds the lock or leads.
pub fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    }
}

pub fn range_kvs(r: &ResponseOp) -> &[KeyValue] {
    match &r.response {
        Some(response_op::Response::ResponseRange(rr)) => &rr.kvs,
        _ => &[],
    }
}

/// This member acting for one client: its requests are proposed, and its
/// reads checked, with that client's permissions, looked up again at each
/// step (a lock may wait for minutes while the auth rules change).
#[derive(Clone)]
pub struct Local {
    pub server: Arc<EtcdServer>,
    credentials: StreamCredentials,
}

impl Local {
    pub fn acting_for<T>(server: &Arc<EtcdServer>, req: &tonic::Request<T>) -> Result<Local, Status> {
        let local = Local { server: server.clone(), credentials: StreamCredentials::new(super::credentials(req)) };
        // Sessions grant leases: nobody gets one without being somebody.
        // (Checked before any clientv3 step, so etcd's own codes.)
        server.auth.check_identity(&local.who()?)?;
        Ok(local)
    }

    fn who(&self) -> Result<AuthHeader, EtcdError> {
        self.server.auth.caller(self.credentials.get())
    }

    /// The steps below are etcd's clientv3 calls: their errors come back as
    /// clientv3 returns them (`through_client`).
    async fn propose(&self, req: Internal) -> Result<ApplyResponse, Status> {
        async { self.server.propose_as(self.who()?, req).await }.await.map_err(EtcdError::through_client)
    }

    /// The lease of a session: the one given, or a new one of clientv3's
    /// default TTL (which, as etcd's server does, nobody keeps alive).
    pub async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let id = self.server.new_lease_id();
        let applied = self.propose(Internal::LeaseGrant(LeaseGrantRequest { ttl: SESSION_TTL, id })).await?;
        Ok(expect(applied, |a| if let ApplyResponse::LeaseGrant(g) = a { Some(g) } else { None })?.id)
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        let applied = self.propose(Internal::Txn(req)).await?;
        let mut resp = expect(applied, |a| if let ApplyResponse::Txn(t) = a { Some(t) } else { None })?;
        self.server.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        let read = async {
            self.server.before_read(false).await?;
            self.server.auth.check_read(&self.who()?, &req.key, &req.range_end)?;
            self.server.range(&req)
        };
        read.await.map_err(EtcdError::through_client)
    }

    pub async fn delete(&self, key: &[u8]) -> Result<DeleteRangeResponse, Status> {
        let req = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
        let applied = self.propose(Internal::DeleteRange(req)).await?;
        let mut resp = expect(applied, |a| if let ApplyResponse::DeleteRange(d) = a { Some(d) } else { None })?;
        self.server.fill(&mut resp.header);
        Ok(resp)
    }

    /// Joins the queue of `name` (clientv3's `Mutex.tryAcquire` and the first
    /// step of `Election.Campaign`): puts `<name>/<lease hex>` unless this
    /// session's key is there already, and learns who is first.
    pub async fn join_queue(&self, name: &[u8], lease: i64, value: &[u8]) -> Result<Queued, Status> {
        let lease = self.session_lease(lease).await?;
        let prefix = [name, b"/"].concat();
        let key = [prefix.as_slice(), format!("{lease:x}").as_bytes()].concat();
        let get_own = RangeRequest { key: key.clone(), ..Default::default() };
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_rev_is(&key, 0)],
                success: vec![put_op(&key, value, lease), get_op(first_created(&prefix))],
                failure: vec![get_op(get_own), get_op(first_created(&prefix))],
            })
            .await?;
        // From here on, a client that gives up leaves no key behind.
        let cleanup = DeleteUnlessKept::new(self, &key);
        let existing =
            if resp.succeeded { None } else { resp.responses.first().and_then(|r| range_kvs(r).first()).cloned() };
        let rev = match &existing {
            Some(kv) => kv.create_revision,
            None => resp.header.as_ref().map_or(0, |h| h.revision),
        };
        let first_rev = resp.responses.get(1).and_then(|r| range_kvs(r).first()).map(|kv| kv.create_revision);
        Ok(Queued { lease, prefix, key, rev, first_rev, existing, header: resp.header, cleanup })
    }

    /// Waits until every key under `prefix` created at or before
    /// `max_create_rev` is deleted (clientv3's `waitDeletes`).
    pub async fn wait_deletes(&self, prefix: &[u8], max_create_rev: i64) -> Result<ResponseHeader, Status> {
        loop {
            let last = RangeRequest {
                sort_order: SortOrder::Descend as i32,
                max_create_revision: max_create_rev,
                ..first_created(prefix)
            };
            let resp = self.range(last).await?;
            let Some(kv) = resp.kvs.first() else {
                return Ok(resp.header.unwrap_or_default());
            };
            let rev = resp.header.as_ref().map_or(0, |h| h.revision);
            let mut watch = LocalWatch::start(self, &kv.key, b"", rev, true).await?;
            while !watch.next().await?.events.iter().any(|e| e.r#type == EventType::Delete as i32) {}
        }
    }
}

/// A place in the queue of a lock or an election.
pub struct Queued {
    pub lease: i64,
    pub prefix: Vec<u8>,
    pub key: Vec<u8>,
    /// Creation revision of `key`: the place in the queue.
    pub rev: i64,
    /// Creation revision of the first key in the queue.
    pub first_rev: Option<i64>,
    /// The key as it was, if this session had queued before.
    pub existing: Option<KeyValue>,
    pub header: Option<ResponseHeader>,
    pub cleanup: DeleteUnlessKept,
}

/// A watch on this member's own watch hub, read in-process.
pub struct LocalWatch {
    // Dropping the request side ends the stream and its watcher.
    _requests: mpsc::Sender<Result<WatchRequest, Status>>,
    responses: mpsc::Receiver<Result<WatchResponse, Status>>,
}

impl LocalWatch {
    pub async fn start(
        local: &Local,
        key: &[u8],
        end: &[u8],
        start_revision: i64,
        deletes_only: bool,
    ) -> Result<Self, Status> {
        let server = &local.server;
        let (req_tx, req_rx) = mpsc::channel(1);
        let (out_tx, responses) = mpsc::channel(16);
        let stream = WatchStream::new(
            server.clone(),
            server.watch_hub.clone(),
            server.store.clone(),
            stream_config(server, false),
            out_tx,
        );
        tokio::spawn(stream.run(ReceiverStream::new(req_rx)));
        let create = WatchCreateRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            start_revision,
            filters: if deletes_only { vec![FilterType::Noput as i32] } else { Vec::new() },
            ..Default::default()
        };
        let req = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
        req_tx.send(Ok(req)).await.map_err(|_| EtcdError::Stopped.through_client())?;
        Ok(LocalWatch { _requests: req_tx, responses })
    }

    /// The next response with events; a canceled watch (compacted) is an error.
    pub async fn next(&mut self) -> Result<WatchResponse, Status> {
        loop {
            let resp = self.responses.recv().await.ok_or_else(|| EtcdError::Stopped.through_client())??;
            if resp.canceled {
                return Err(EtcdError::Compacted.through_client());
            }
            if !resp.events.is_empty() {
                return Ok(resp);
            }
        }
    }
}

/// Deletes a key if the request that created it is abandoned (the client
/// went away while waiting), as clientv3 cleans up a canceled Lock/Campaign.
pub struct DeleteUnlessKept {
    local: Option<Local>,
    key: Vec<u8>,
}

impl DeleteUnlessKept {
    pub fn new(local: &Local, key: &[u8]) -> Self {
        DeleteUnlessKept { local: Some(local.clone()), key: key.to_vec() }
    }

    pub fn keep(mut self) {
        self.local = None;
    }
}

impl Drop for DeleteUnlessKept {
    fn drop(&mut self) {
        if let Some(local) = self.local.take() {
            let key = std::mem::take(&mut self.key);
            tokio::spawn(async move {
                if let Err(e) = local.delete(&key).await {
                    tracing::warn!(error = %e, "removing an abandoned lock/election key failed");
                }
            });
        }
    }
}
