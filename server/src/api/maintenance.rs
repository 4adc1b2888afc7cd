//! The Maintenance service: Status, Alarm, Hash, HashKV, Defragment,
//! Snapshot, MoveLeader and Downgrade.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::io::Seek;

use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

use super::expect;
use crate::apply::ApplyResponse;
use crate::config::ETCD_API_VERSION;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;
use crate::proto::ferrocdpb::internal_request::Request as Internal;
use crate::server::EtcdServer;

pub struct MaintenanceService {
    server: Arc<EtcdServer>,
}

impl MaintenanceService {
    pub fn new(server: Arc<EtcdServer>) -> MaintenanceService {
        MaintenanceService { server }
    }
}

impl MaintenanceService {
    /// As etcd: with auth on, only the root role may hash, defragment or
    /// snapshot, and a refusal comes unconverted (code Unknown).
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let who = self.server.auth.caller(super::credentials(req)).map_err(EtcdError::unconverted)?;
        self.server.auth.check_admin(&who).map_err(EtcdError::unconverted)
    }
}

/// etcd's snapshot piece size.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// Writes the image to an unnamed file (gone on close, even after a crash).
fn stage_snapshot(s: &EtcdServer) -> Result<(std::fs::File, crate::mvcc::SnapshotInfo), Status> {
    let fail = |e: std::io::Error| Status::internal(format!("staging a snapshot: {e}"));
    let mut file = tempfile::tempfile_in(&s.snap_dir).map_err(fail)?;
    let info = s.store.snapshot(std::io::BufWriter::new(&mut file)).map_err(EtcdError::from)?;
    file.seek(std::io::SeekFrom::Start(0)).map_err(fail)?;
    Ok((file, info))
}

/// A semantic version, "major.minor.patch" (etcd parses downgrade targets so).
fn is_version(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Runs a backend read off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::mvcc::MvccError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => Ok(result.map_err(crate::error::EtcdError::from)?),
        Err(e) => Err(Status::internal(e.to_string())),
    }
}

type SnapshotStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Listing alarms needs a user, raising or clearing them the root role
    /// (as etcd 3.5.29+).
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        let r = req.into_inner();
        if r.action() == alarm_request::AlarmAction::Get {
            self.server.auth.check_identity(&who)?;
        } else {
            self.server.auth.check_admin(&who)?;
        }
        let applied = self.server.propose_as(who, Internal::Alarm(r)).await?;
        let mut resp = expect(applied, |a| if let ApplyResponse::Alarm(r) = a { Some(r) } else { None })?;
        self.server.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = &self.server;
        s.auth.check_identity(&s.auth.caller(super::credentials(&req))?)?;
        let node = s.node.status();
        let db_size = s.db_size.load(Ordering::Acquire) as i64;
        let mut errors = Vec::new();
        if node.leader() == 0 {
            errors.push(crate::error::EtcdError::NoLeader.to_string());
        }
        for a in s.alarms.list() {
            let name = AlarmType::try_from(a.alarm).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
            errors.push(format!("memberID:{} alarm:{} ", a.member_id, name));
        }
        Ok(Response::new(StatusResponse {
            header: Some(s.header(0)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: node.leader(),
            raft_index: node.commit_index(),
            raft_term: node.term(),
            raft_applied_index: node.applied_index(),
            errors,
            // What the quota counts (see `Store::held_bytes`).
            db_size_in_use: s.store.held_bytes() as i64,
            is_learner: s.is_learner(),
            storage_version: String::new(),
            db_size_quota: s.limits.quota_bytes as i64,
            downgrade_info: None,
        }))
    }

    /// Rewrites the backend compactly (see `mvcc::defrag`): reads and
    /// writes go on during the copy and wait only for its last step.
    async fn defragment(&self, req: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&req)?;
        let s = self.server.clone();
        blocking(move || {
            let (_, after) = s.store.defragment()?;
            s.db_size.store(after, Ordering::Release);
            Ok(())
        })
        .await?;
        // etcd 3.5 answers with no header here.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&req)?;
        let s = self.server.clone();
        let hash = blocking(move || s.store.hash_all()).await?;
        Ok(Response::new(HashResponse { header: Some(self.server.header(0)), hash }))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&req)?;
        Ok(Response::new(self.server.hash_kv(req.into_inner().revision).await?))
    }

    type SnapshotStream = SnapshotStream;

    /// The image is written to an unnamed file in `member/snap` first (at
    /// disk speed, so compaction's deletions are held back only that long),
    /// then streamed at the client's pace in etcd's 32 KiB pieces.
    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&req)?;
        let s = self.server.clone();
        let (file, info) = match tokio::task::spawn_blocking(move || stage_snapshot(&s)).await {
            Ok(result) => result?,
            Err(e) => return Err(Status::internal(e.to_string())),
        };
        tracing::info!(revision = info.revision, size = info.size, "sending a snapshot");
        let server = self.server.clone();
        let chunks =
            futures::stream::try_unfold((tokio::fs::File::from_std(file), info.size), move |(mut file, remaining)| {
                let server = server.clone();
                async move {
                    if remaining == 0 {
                        return Ok(None);
                    }
                    let mut blob = vec![0; SNAPSHOT_CHUNK.min(remaining as usize)];
                    file.read_exact(&mut blob)
                        .await
                        .map_err(|e| Status::internal(format!("reading a snapshot: {e}")))?;
                    let remaining = remaining - blob.len() as u64;
                    let resp = SnapshotResponse {
                        header: Some(server.header(0)),
                        remaining_bytes: remaining,
                        blob,
                        version: String::new(),
                    };
                    Ok(Some((resp, (file, remaining))))
                }
            });
        Ok(Response::new(Box::pin(chunks)))
    }

    /// Moves leadership to another voter (`EtcdServer::move_leader`).
    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        self.server.auth.check_admin(&who)?;
        self.server.move_leader(req.into_inner().target_id).await?;
        // etcd 3.5 answers with no header here.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    /// ferrocd keeps its own storage format at every API version, so no
    /// downgrade target exists: a well-formed one gets etcd's "invalid
    /// downgrade target version", and there is never a job to cancel.
    async fn downgrade(&self, req: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        self.server.auth.check_admin(&who)?;
        let r = req.into_inner();
        match downgrade_request::DowngradeAction::try_from(r.action) {
            Ok(downgrade_request::DowngradeAction::Validate | downgrade_request::DowngradeAction::Enable) => {
                if !is_version(&r.version) {
                    return Err(Status::invalid_argument("etcdserver: wrong downgrade target version format"));
                }
                self.server.linearizable_barrier().await?;
                Err(Status::invalid_argument("etcdserver: invalid downgrade target version"))
            }
            Ok(downgrade_request::DowngradeAction::Cancel) => {
                Err(Status::failed_precondition("etcdserver: no inflight downgrade job"))
            }
            Err(_) => Err(Status::unknown("etcdserver: unknown method")),
        }
    }
}
