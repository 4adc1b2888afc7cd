//! `ferrocdutl hand-over`: if the member at an endpoint leads, hands
//! leadership to the most caught-up voter that answers, and waits for it.
//! Meant as a Pod's preStop hook, so that a member stopped by a drain or a
//! manual delete does not leave the cluster waiting out an election.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferrocd::proto::etcdserverpb::cluster_client::ClusterClient;
use ferrocd::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ferrocd::proto::etcdserverpb::{MemberListRequest, MoveLeaderRequest, StatusRequest, StatusResponse};
use ferrocd::tls::{ClientTls, Connector};
use tonic::transport::{Channel, Endpoint};

/// How members are dialed: within `timeout`, over TLS for https:// URLs.
struct Dial {
    timeout: Duration,
    tls: Option<Arc<dyn ClientTls>>,
}

impl Dial {
    async fn channel(&self, url: &str) -> anyhow::Result<Channel> {
        let (connector, plain) = Connector::for_url(url, self.tls.clone(), self.timeout).map_err(anyhow::Error::msg)?;
        let endpoint = Endpoint::from_shared(plain)?.connect_timeout(self.timeout).timeout(self.timeout);
        endpoint.connect_with_connector(connector).await.with_context(|| format!("connecting to {url}"))
    }

    async fn status(&self, url: &str) -> anyhow::Result<StatusResponse> {
        let mut c = MaintenanceClient::new(self.channel(url).await?);
        Ok(c.status(StatusRequest {}).await.with_context(|| format!("status of {url}"))?.into_inner())
    }
}

/// What was done, as one line.
pub async fn hand_over(endpoint: &str, timeout: Duration, tls: Option<Arc<dyn ClientTls>>) -> anyhow::Result<String> {
    let dial = Dial { timeout, tls };
    let me = dial.status(endpoint).await?;
    let my_id = me.header.as_ref().map(|h| h.member_id).unwrap_or_default();
    if me.leader != my_id {
        return Ok(format!("member {my_id:x} does not lead; nothing to hand over"));
    }
    let mut cluster = ClusterClient::new(dial.channel(endpoint).await?);
    let members = cluster.member_list(MemberListRequest { linearizable: false }).await?.into_inner().members;
    let mut best: Option<(u64, u64)> = None;
    for m in members.iter().filter(|m| m.id != my_id && !m.is_learner) {
        for url in &m.client_ur_ls {
            if let Ok(s) = dial.status(url).await {
                if best.is_none_or(|(_, index)| s.raft_index > index) {
                    best = Some((m.id, s.raft_index));
                }
                break;
            }
        }
    }
    let (target, _) = best.context("no other voter answers; leadership stays")?;
    let mut maintenance = MaintenanceClient::new(dial.channel(endpoint).await?);
    maintenance.move_leader(MoveLeaderRequest { target_id: target }).await.context("moving leadership")?;
    Ok(format!("leadership moved from {my_id:x} to {target:x}"))
}
