//! Data corruption checks across members, as etcd's: members compare
//! HashKV at the same revision (with the same compaction), so that a member
//! whose data silently diverged is found. At start-up
//! (`--experimental-initial-corrupt-check`) a member that disagrees with
//! its peers refuses to serve; periodically
//! (`--experimental-corrupt-check-time`) the leader asks every member and
//! raises the CORRUPT alarm for one that disagrees. With the alarm up,
//! reads and writes answer etcd's "corrupt cluster" until an operator
//! deals with the member and disarms it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::EtcdError;
use crate::proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType, HashKvRequest, HashKvResponse};
use crate::proto::ferrocdpb::internal_request::Request;
use crate::server::EtcdServer;

/// How a peer's hash compares with this member's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Same,
    Differs,
    /// Not comparable (another compaction, a revision the peer lacks, no answer).
    Unknown,
}

impl EtcdServer {
    /// HashKV of this member's store (on a blocking thread: it reads every
    /// revision up to `rev`).
    pub async fn hash_kv(&self, rev: i64) -> Result<HashKvResponse, EtcdError> {
        let store = self.store.clone();
        let (hash, compact_revision, hash_revision) = tokio::task::spawn_blocking(move || store.hash_kv(rev))
            .await
            .map_err(|e| EtcdError::Internal(e.to_string()))??;
        Ok(HashKvResponse { header: Some(self.header(0)), hash, compact_revision, hash_revision })
    }

    /// Compares this member's HashKV with every peer's at the revision
    /// both have (the lower of the two current ones, so a member ahead or
    /// behind is compared too): (peer, verdict) for each.
    pub async fn compare_hashes(&self) -> Vec<(u64, Verdict)> {
        let mut out = Vec::new();
        for id in self.membership.current().members.keys().copied().filter(|id| *id != self.member.id) {
            out.push((id, self.compare_with(id).await));
        }
        out
    }

    async fn compare_with(&self, peer: u64) -> Verdict {
        let Ok(client) = self.transport.peer_client(peer) else { return Verdict::Unknown };
        let ask = |revision| {
            let mut c = client.clone();
            async move { c.hash_kv(HashKvRequest { revision }).await.map(|r| r.into_inner()).ok() }
        };
        let Some(latest) = ask(0).await else { return Verdict::Unknown };
        let Ok(mine_now) = self.hash_kv(0).await else { return Verdict::Unknown };
        let at = latest.hash_revision.min(mine_now.hash_revision);
        let theirs = if at == latest.hash_revision { Some(latest) } else { ask(at).await };
        let mine = if at == mine_now.hash_revision { Ok(mine_now) } else { self.hash_kv(at).await };
        match (theirs, mine) {
            (Some(t), Ok(m)) if t.compact_revision == m.compact_revision && t.hash_revision == m.hash_revision => {
                if t.hash == m.hash {
                    Verdict::Same
                } else {
                    Verdict::Differs
                }
            }
            _ => Verdict::Unknown,
        }
    }

    /// etcd's initial corruption check: false when a peer's data differs
    /// from this member's at the same revision.
    pub async fn initial_corrupt_check(&self) -> bool {
        for (peer, verdict) in self.compare_hashes().await {
            if verdict == Verdict::Differs {
                tracing::error!(
                    peer = format!("{peer:x}"),
                    "this member's data differs from a peer's at the same revision"
                );
                return false;
            }
        }
        true
    }

    /// The leader's periodic check: raises CORRUPT for every member whose
    /// hash differs from the leader's (and for the leader itself when it
    /// disagrees with every peer that answered).
    async fn check_members(&self) -> Result<(), EtcdError> {
        if !self.is_leader() || self.alarms.is_active(AlarmType::Corrupt) {
            return Ok(());
        }
        let verdicts = self.compare_hashes().await;
        let differ: Vec<u64> = verdicts.iter().filter(|(_, v)| *v == Verdict::Differs).map(|(id, _)| *id).collect();
        let same = verdicts.iter().filter(|(_, v)| *v == Verdict::Same).count();
        let corrupt = if !differ.is_empty() && same == 0 && differ.len() > 1 { vec![self.member.id] } else { differ };
        for member_id in corrupt {
            tracing::error!(
                member = format!("{member_id:x}"),
                "member's data differs at the same revision: raising CORRUPT"
            );
            let alarm =
                AlarmRequest { action: AlarmAction::Activate as i32, member_id, alarm: AlarmType::Corrupt as i32 };
            self.propose(Request::Alarm(alarm)).await?;
        }
        Ok(())
    }
}

/// Runs the leader's check every `interval`.
pub async fn run(server: Arc<EtcdServer>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval);
    tick.reset();
    loop {
        tokio::select! {
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
            _ = tick.tick() => {
                if let Err(e) = server.check_members().await {
                    tracing::warn!(error = %e, "corruption check failed; will try again");
                }
            }
        }
    }
}
