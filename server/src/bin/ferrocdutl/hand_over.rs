//! `ferrocdutl hand-over`: if the member at an endpoint leads, hands
//! leadership to the most caught-up voter that answers, and waits for it.
//! Meant as a Pod's preStop hook, so that a member stopped by a drain or a
//! manual delete does not leave the cluster waiting out an election.

use std::time::Duration;

use anyhow::Context;
use ferrocd::proto::etcdserverpb::cluster_client::ClusterClient;
use ferrocd::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ferrocd::proto::etcdserverpb::{MemberListRequest, MoveLeaderRequest, StatusRequest, StatusResponse};
use tonic::transport::{Channel, Endpoint};

async fn channel(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())?.connect_timeout(timeout).timeout(timeout);
    endpoint.connect().await.with_context(|| format!("connecting to {url}"))
}

async fn status(url: &str, timeout: Duration) -> anyhow::Result<StatusResponse> {
    let mut c = MaintenanceClient::new(channel(url, timeout).await?);
    Ok(c.status(StatusRequest {}).await.with_context(|| format!("status of {url}"))?.into_inner())
}

/// What was done, as one line.
pub async fn hand_over(endpoint: &str, timeout: Duration) -> anyhow::Result<String> {
    let me = status(endpoint, timeout).await?;
    let my_id = me.header.as_ref().map(|h| h.member_id).unwrap_or_default();
    if me.leader != my_id {
        return Ok(format!("member {my_id:x} does not lead; nothing to hand over"));
    }
    let mut cluster = ClusterClient::new(channel(endpoint, timeout).await?);
    let members = cluster.member_list(MemberListRequest { linearizable: false }).await?.into_inner().members;
    let mut best: Option<(u64, u64)> = None;
    for m in members.iter().filter(|m| m.id != my_id && !m.is_learner) {
        for url in &m.client_ur_ls {
            if let Ok(s) = status(url, timeout).await {
                if best.is_none_or(|(_, index)| s.raft_index > index) {
                    best = Some((m.id, s.raft_index));
                }
                break;
            }
        }
    }
    let (target, _) = best.context("no other voter answers; leadership stays")?;
    let mut maintenance = MaintenanceClient::new(channel(endpoint, timeout).await?);
    maintenance.move_leader(MoveLeaderRequest { target_id: target }).await.context("moving leadership")?;
    Ok(format!("leadership moved from {my_id:x} to {target:x}"))
}
