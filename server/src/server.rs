//! The member's request core, between the API and raft: proposes writes and
//! waits for their results, provides linearizable read barriers, fills
//! response headers, and enforces the request limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::alarm::Alarms;
use crate::apply::{execute_range, execute_txn};
use crate::apply::{ApplyResponse, ApplyResult};
use crate::auth::AuthStore;
use crate::error::EtcdError;
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::mvcc::Store;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmType, Member, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::ferrocdpb::{internal_request::Request, AuthHeader, InternalRequest};
use crate::quota;
use crate::raftnode::Node;
use crate::transport::Transport;
use crate::wait::Wait;
use crate::watch::stream::WatchContext;
use crate::watch::WatchHub;

/// etcd refuses new proposals when apply lags commit by this much.
const MAX_APPLY_GAP: u64 = 5_000;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_bytes: u64,
    pub request_timeout: Duration,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// See `api::response_budget`.
    pub max_unread_response_bytes: u64,
    /// Learners the cluster may have at once (`--experimental-max-learners`).
    pub max_learners: usize,
    /// Refuse membership changes that would leave too few running voters.
    pub strict_reconfig_check: bool,
}

#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

pub struct EtcdServer {
    pub cluster_id: u64,
    pub member: MemberInfo,
    pub limits: Limits,
    pub store: Arc<Store>,
    pub alarms: Arc<Alarms>,
    pub node: Node,
    pub wait: Arc<Wait<ApplyResult>>,
    /// Backend size on disk, refreshed by the applier.
    pub db_size: Arc<AtomicU64>,
    pub next_id: AtomicU64,
    pub watch_hub: Arc<WatchHub>,
    pub lessor: Arc<Lessor>,
    pub auth: Arc<AuthStore>,
    pub metrics: Arc<Metrics>,
    pub membership: Arc<Membership>,
    pub transport: Arc<Transport>,
    /// Where snapshot images are staged (`member/snap`).
    pub snap_dir: std::path::PathBuf,
    pub watch_progress_interval: Duration,
    pub election_timeout: Duration,
}

/// Proposal IDs: member bits on top, then the start time, so IDs of this
/// and earlier runs (still in the log) do not collide.
pub fn proposal_ids(member_id: u64) -> AtomicU64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    AtomicU64::new((member_id & 0xffff) << 48 | (now & 0xff_ffff_ffff) << 8)
}

impl EtcdServer {
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member.id,
            revision: if revision == 0 { self.store.current_rev() } else { revision },
            raft_term: self.node.status().term(),
        }
    }

    /// A new lease ID, positive and never 0 (as etcd, from its request IDs).
    pub fn new_lease_id(&self) -> i64 {
        loop {
            let id = (self.next_id.fetch_add(1, Ordering::Relaxed) & i64::MAX as u64) as i64;
            if id != 0 {
                return id;
            }
        }
    }

    pub fn has_leader(&self) -> bool {
        self.node.status().leader() != 0
    }

    pub fn is_learner(&self) -> bool {
        self.membership.local_is_learner()
    }

    pub fn is_leader(&self) -> bool {
        self.node.status().leader() == self.member.id
    }

    /// The keys attached to lease `id` (as applied here).
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.store.lease_keys(id)
    }

    /// The IDs of the leases the lessor holds.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.lessor.ids()
    }

    /// The members as applied here.
    pub fn members(&self) -> Vec<Member> {
        self.membership.current().list()
    }

    /// Fills the member fields of a header the applier started.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// Proposes the member's own write (lease expiry, compaction, alarms)
    /// through raft and waits until it is applied. No auth check applies.
    pub async fn propose(&self, request: Request) -> Result<ApplyResponse, EtcdError> {
        self.propose_with(None, request).await
    }

    /// Proposes a client's write, checked against `who`'s permissions when
    /// it applies. A write that adds data passes etcd's quota check first,
    /// whichever service it came through (KV, Lease, Lock, Election).
    pub async fn propose_as(&self, who: AuthHeader, request: Request) -> Result<ApplyResponse, EtcdError> {
        let cost = quota::cost(&request);
        if cost > 0 {
            self.check_quota(cost).await?;
        }
        self.propose_with(Some(who), request).await
    }

    async fn propose_with(&self, who: Option<AuthHeader>, request: Request) -> Result<ApplyResponse, EtcdError> {
        let result = self.propose_inner(who, request).await;
        // etcd counts proposals that never got a result (dropped, timed out,
        // stopped), not requests the applier refused.
        if matches!(
            result,
            Err(EtcdError::NoLeader
                | EtcdError::LeaderChanged
                | EtcdError::Timeout
                | EtcdError::Stopped
                | EtcdError::TooManyRequests)
        ) {
            self.metrics.proposals_failed.inc();
        }
        result
    }

    async fn propose_inner(&self, who: Option<AuthHeader>, request: Request) -> Result<ApplyResponse, EtcdError> {
        let status = self.node.status();
        if status.is_stopped() {
            return Err(EtcdError::Stopped);
        }
        if status.commit_index().saturating_sub(status.applied_index()) > MAX_APPLY_GAP {
            return Err(EtcdError::TooManyRequests);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = InternalRequest { id, request: Some(request), auth_header: who }.encode_to_vec();
        if data.len() > self.limits.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        self.await_proposal_as(id, |id| self.node.propose(id, data)).await
    }

    /// Hands a proposal to raft with a new ID and waits for its result.
    pub async fn await_proposal(
        &self,
        submit: impl FnOnce(u64) -> Result<(), EtcdError>,
    ) -> Result<ApplyResponse, EtcdError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.await_proposal_as(id, submit).await
    }

    async fn await_proposal_as(
        &self,
        id: u64,
        submit: impl FnOnce(u64) -> Result<(), EtcdError>,
    ) -> Result<ApplyResponse, EtcdError> {
        let done = self.wait.register(id);
        if let Err(e) = submit(id) {
            self.wait.cancel(id);
            return Err(e);
        }
        match tokio::time::timeout(self.limits.request_timeout, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EtcdError::Stopped),
            Err(_) => {
                self.wait.cancel(id);
                Err(EtcdError::Timeout)
            }
        }
    }

    /// Returns once this member has applied every write a linearizable read
    /// must see (`Node::read_barrier`).
    /// Without a known leader it fails at once with etcd's "no leader", so
    /// that the client tries another member instead of waiting out the
    /// request timeout on one that is cut off.
    pub async fn linearizable_barrier(&self) -> Result<(), EtcdError> {
        if !self.has_leader() {
            return Err(EtcdError::NoLeader);
        }
        self.within_request_timeout(self.node.read_barrier()).await
    }

    /// What a read (Range, read-only Txn) needs before it reads the store:
    /// a member raised CORRUPT for does not serve reads (etcd 3.5 does; its
    /// data cannot be vouched for); a linearizable read is refused on a
    /// learner and waits for the read barrier.
    pub async fn before_read(&self, serializable: bool) -> Result<(), EtcdError> {
        if self.alarms.is_active_for(AlarmType::Corrupt, self.member.id) {
            return Err(EtcdError::Corrupt);
        }
        if !serializable {
            if self.is_learner() {
                return Err(EtcdError::NotSupportedForLearner);
            }
            self.linearizable_barrier().await?;
        }
        Ok(())
    }

    /// A Range on the store as it is now, with the response header filled.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        let mut resp = execute_range(&self.store.read(), r)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// A read-only Txn on one consistent view of the store (the applier and
    /// other readers go on meanwhile), with the response header filled.
    pub fn read_only_txn(&self, r: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let mut resp = execute_txn(&mut self.store.read(), r)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// A linearizable barrier that always asks raft, for health checks: it
    /// fails when the raft thread is stuck (on a hung disk, say), which a
    /// lone leader's `linearizable_barrier` would not notice.
    pub async fn raft_barrier(&self) -> Result<(), EtcdError> {
        self.within_request_timeout(self.node.read_index()).await
    }

    pub(crate) async fn within_request_timeout(
        &self,
        barrier: impl std::future::Future<Output = Result<(), EtcdError>>,
    ) -> Result<(), EtcdError> {
        within_deadline(tokio::time::Instant::now() + self.limits.request_timeout, barrier).await
    }

    /// etcd's quota check before a write that adds data: over quota, the
    /// NOSPACE alarm is raised and the write refused. What counts is what
    /// the store holds for its users (`Store::held_bytes`), not sled's
    /// files, which take more between defragmentations.
    async fn check_quota(&self, cost: u64) -> Result<(), EtcdError> {
        let size = self.store.held_bytes();
        if size + cost < self.limits.quota_bytes {
            return Ok(());
        }
        tracing::warn!(size, quota = self.limits.quota_bytes, "backend quota exceeded; raising NOSPACE alarm");
        let alarm = AlarmRequest {
            action: crate::proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.member.id,
            alarm: AlarmType::Nospace as i32,
        };
        self.propose(Request::Alarm(alarm)).await?;
        Err(EtcdError::NoSpace)
    }
}

impl WatchContext for EtcdServer {
    fn header(&self, rev: i64) -> ResponseHeader {
        // As etcd's watch headers: the revision exactly as given (0 included).
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member.id,
            revision: rev,
            raft_term: self.node.status().term(),
        }
    }

    fn has_leader(&self) -> bool {
        EtcdServer::has_leader(self)
    }

    /// The member's own watches (lock and election waits) follow reads that
    /// were checked already.
    fn check_watch(&self, _key: &[u8], _range_end: &[u8]) -> Result<(), EtcdError> {
        Ok(())
    }
}

/// `f`'s outcome, or etcd's "request timed out" once `deadline` passes.
pub(crate) async fn within_deadline<T>(
    deadline: tokio::time::Instant,
    f: impl std::future::Future<Output = Result<T, EtcdError>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout_at(deadline, f).await {
        Ok(result) => result,
        Err(_) => Err(EtcdError::Timeout),
    }
}
