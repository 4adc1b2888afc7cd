//! Applies committed raft entries to the store in log order, one atomic
//! backend batch per group of entries, and hands each result to the request
//! waiting for it. Entries already in the backend (WAL replay after a
//! restart) are skipped by the consistent index, so nothing applies twice.

mod kv;
mod lease;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Histogram;
use prost::Message;

pub use kv::{execute_range, execute_txn, is_txn_read_only, is_txn_serializable};

use crate::alarm::Alarms;
use crate::auth::{AuthResponse, AuthStore};
use crate::error::EtcdError;
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::{SnapshotImage, Store, TxnWrite, WriteBatch};
use crate::proto::authpb::permission::Type;
use crate::proto::etcdserverpb::{
    AlarmResponse, AlarmType, CompactionRequest, CompactionResponse, DeleteRangeResponse, LeaseCheckpointResponse,
    LeaseGrantResponse, LeaseRevokeResponse, Member, PutResponse, ResponseHeader, TxnResponse,
};
use crate::proto::ferrocdpb::{internal_request::Request, AuthHeader, InternalRequest};
use crate::quota;
use crate::raftnode::{CommittedEntry, StateMachine, Voters};
use crate::wait::Wait;
use crate::watch::WatchHub;

/// How often the backend's size on disk is re-read for quota checks.
const SIZE_REFRESH: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub enum ApplyResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    Alarm(AlarmResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(LeaseCheckpointResponse),
    Auth(AuthResponse),
    /// The members after a membership change.
    Members(Vec<Member>),
}

pub type ApplyResult = Result<ApplyResponse, EtcdError>;

/// What the applier changes and whom it tells, shared with the rest of the member.
pub struct ApplyTargets {
    pub store: Arc<Store>,
    pub alarms: Arc<Alarms>,
    pub wait: Arc<Wait<ApplyResult>>,
    /// Backend size on disk, refreshed for quota checks.
    pub db_size: Arc<AtomicU64>,
    pub watch_hub: Arc<WatchHub>,
    pub lessor: Arc<Lessor>,
    pub auth: Arc<AuthStore>,
    pub membership: Arc<Membership>,
    pub backend_commit: Histogram,
}

pub struct Applier {
    t: ApplyTargets,
    size_checked: Instant,
}

impl Applier {
    pub fn new(targets: ApplyTargets) -> Applier {
        targets.db_size.store(targets.store.db_size(), Ordering::Release);
        Applier { t: targets, size_checked: Instant::now() }
    }

    /// Writes the applied backlog to sled when due (etcd's backend commit,
    /// which its `backend_commit_duration` metric times).
    fn write_out_if_due(&self) -> Result<(), EtcdError> {
        if let Some(took) = self.t.store.write_out_if_due()? {
            self.t.backend_commit.observe(took.as_secs_f64());
        }
        Ok(())
    }

    /// A client's request under the auth rules as they are now (they may
    /// have changed since the request was received).
    fn check_auth(&self, batch: &WriteBatch<'_>, who: &AuthHeader, request: &Request) -> Result<(), EtcdError> {
        if !self.t.auth.is_enabled() {
            return Ok(());
        }
        match request {
            Request::Put(r) => self.t.auth.check_put(who, r, &|id| batch.lease_keys(id)),
            Request::DeleteRange(r) => self.t.auth.check_delete(who, r),
            Request::Txn(r) => self.t.auth.check_txn(who, r, &|id| batch.lease_keys(id)),
            // Revoking deletes the lease's keys.
            Request::LeaseRevoke(r) => self.t.auth.check_keys(who, &batch.lease_keys(r.id), Type::Write),
            // Auth requests are checked by the auth store; the rest need no
            // permission in etcd either.
            _ => Ok(()),
        }
    }

    fn apply_one(
        &self,
        batch: &mut WriteBatch<'_>,
        index: u64,
        who: Option<&AuthHeader>,
        request: Request,
    ) -> ApplyResult {
        if let Some(who) = who {
            self.check_auth(batch, who, &request)?;
        }
        // Under CORRUPT, every change of keys and leases is refused (as
        // etcd's corrupt applier): the data cannot be vouched for.
        if self.t.alarms.is_active(AlarmType::Corrupt)
            && matches!(request, Request::Put(_) | Request::DeleteRange(_) | Request::Txn(_) | Request::LeaseGrant(_))
        {
            return Err(EtcdError::Corrupt);
        }
        // Under NOSPACE, writes that add data are refused (as etcd's capped
        // applier): puts, txns with puts, lease grants.
        if self.t.alarms.is_active(AlarmType::Nospace) && quota::cost(&request) > 0 {
            return Err(EtcdError::NoSpace);
        }
        match request {
            Request::Put(r) => all_or_nothing(batch, |t| kv::put(t, &r)).map(ApplyResponse::Put),
            Request::DeleteRange(r) => {
                all_or_nothing(batch, |t| kv::delete_range(t, &r)).map(ApplyResponse::DeleteRange)
            }
            Request::Txn(r) => all_or_nothing(batch, |t| execute_txn(t, &r)).map(ApplyResponse::Txn),
            Request::Compaction(r) => compact(batch, &r).map(ApplyResponse::Compaction),
            Request::Alarm(r) => Ok(ApplyResponse::Alarm(self.t.alarms.apply(batch, &r))),
            Request::LeaseGrant(r) => lease::grant(batch, &self.t.lessor, &r).map(ApplyResponse::LeaseGrant),
            Request::LeaseRevoke(r) => lease::revoke(batch, &self.t.lessor, &r).map(ApplyResponse::LeaseRevoke),
            Request::LeaseCheckpoint(r) => {
                Ok(ApplyResponse::LeaseCheckpoint(lease::checkpoint(batch, &self.t.lessor, &r)))
            }
            Request::MemberAttributes(a) => self.t.membership.apply_attributes(batch, &a).map(ApplyResponse::Members),
            Request::Auth(r) => match (r.request, who) {
                (Some(r), Some(who)) => self.t.auth.apply(batch, index, who, r).map(ApplyResponse::Auth),
                _ => Err(EtcdError::Internal("auth request without a request or a caller".into())),
            },
        }
    }
}

/// Runs one request's changes; if it fails part way, its writes are taken
/// back, so a refused request never leaves half of itself applied.
fn all_or_nothing<T>(
    batch: &mut WriteBatch<'_>,
    f: impl FnOnce(&mut TxnWrite<'_, '_>) -> Result<T, EtcdError>,
) -> Result<T, EtcdError> {
    let mut t = batch.txn();
    let result = f(&mut t);
    if result.is_err() {
        t.rollback();
    }
    result
}

fn compact(batch: &mut WriteBatch<'_>, r: &CompactionRequest) -> Result<CompactionResponse, EtcdError> {
    batch.compact(r.revision)?;
    Ok(CompactionResponse { header: Some(ResponseHeader { revision: batch.current_rev(), ..Default::default() }) })
}

impl StateMachine for Applier {
    fn apply(&mut self, entries: &[CommittedEntry<'_>]) -> Result<(), EtcdError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut results = Vec::new();
        let mut batch = self.t.store.write();
        for e in entries {
            if batch.already_applied(e.index) {
                continue;
            }
            if let Some(cc) = &e.conf_change {
                let (id, result) = self.t.membership.apply_conf_change(&mut batch, cc);
                results.push((id, result.map(ApplyResponse::Members)));
                continue;
            }
            if e.data.is_empty() {
                continue;
            }
            match InternalRequest::decode(e.data) {
                Ok(InternalRequest { id, request: Some(request), auth_header }) => {
                    results.push((id, self.apply_one(&mut batch, e.index, auth_header.as_ref(), request)))
                }
                Ok(InternalRequest { id, request: None, .. }) => {
                    results.push((id, Err(EtcdError::Internal("empty request".into()))))
                }
                // Only this server proposes entries; an undecodable one is a bug
                // or damage, and skipping it keeps every member identical.
                Err(err) => {
                    tracing::error!(index = e.index, %err, "skipping undecodable raft entry")
                }
            }
        }
        let events = batch.commit(last.index, last.term);
        // Watchers hear of a revision no later than the client that wrote it.
        self.t.watch_hub.publish(events, self.t.store.current_rev());
        for (id, result) in results {
            self.t.wait.trigger(id, result);
        }
        Ok(())
    }

    fn background(&mut self) -> Result<(), EtcdError> {
        self.write_out_if_due()?;
        if self.size_checked.elapsed() >= SIZE_REFRESH {
            self.t.db_size.store(self.t.store.db_size(), Ordering::Release);
            self.size_checked = Instant::now();
        }
        Ok(())
    }

    fn background_due(&self) -> bool {
        self.t.store.write_out_due()
    }

    fn applied_index(&self) -> u64 {
        self.t.store.consistent_index()
    }

    fn voters(&self) -> Option<Voters> {
        let members = self.t.membership.current();
        (!members.members.is_empty()).then(|| members.voters())
    }

    fn sync(&mut self) -> Result<(), EtcdError> {
        self.t.store.flush()?;
        Ok(())
    }

    fn restore(&mut self, image: &std::path::Path) -> Result<u64, EtcdError> {
        let bytes = std::fs::read(image)
            .map_err(|e| EtcdError::Internal(format!("cannot read snapshot image {}: {e}", image.display())))?;
        let image = SnapshotImage::parse(&bytes)?;
        drop(bytes);
        let t = &self.t;
        let applied = t.store.install(&image)?;
        t.alarms.reload(&t.store)?;
        t.auth.reload(&t.store)?;
        t.membership.reload(&t.store)?;
        t.lessor.promote(t.store.leases());
        t.watch_hub.resync_all(t.store.current_rev());
        t.db_size.store(t.store.db_size(), Ordering::Release);
        Ok(applied)
    }

    fn proposal_dropped(&mut self, id: u64, err: EtcdError) {
        self.t.wait.trigger(id, Err(err));
    }
}
