//! Carrying out the planner's one step: one Kubernetes write or one
//! membership call.

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::time::Duration;

use serde_json::json;
use thiserror::Error;

use crate::members::MembershipError;
use crate::names::ROLE_LABEL;
use crate::observe::Observation;
use crate::plan::Action;
use crate::resources::{Builder, Role, STATE_KEY};

#[derive(Debug, Error)]
pub enum ActError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("membership call failed: {0}")]
    Membership(#[from] MembershipError),
    #[error("{0}")]
    Stuck(String),
}

/// The grace period of a force-restarted member's old pod, and how long it
/// may take to go.
const FORCE_RESTART_GRACE: u32 = 5;
const FORCE_RESTART_TIMEOUT: Duration = Duration::from_secs(60);

impl ActError {
    /// Refused for now (a learner catching up, an election): retried soon.
    pub fn is_transient(&self) -> bool {
        matches!(self, ActError::Membership(e) if e.is_transient())
    }
}

/// Does `action`. `Wait`, `Refuse`, `Idle` and `LockTarget` (a status
/// write) do nothing here.
pub async fn act(client: &Client, b: &Builder<'_>, obs: &Observation, action: &Action) -> Result<(), ActError> {
    let ns = &b.names.namespace;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let membership = || obs.membership.as_ref().ok_or(MembershipError::Unreachable);
    match action {
        Action::CreateSeed { name } => {
            ensure_claim(&claims, b, name).await?;
            create(&pods, &b.pod(name, std::slice::from_ref(name), Role::Voter, false)).await?;
        }
        Action::MarkBootstrapped => {
            let patch = json!({"data": {STATE_KEY: "existing"}});
            Api::<ConfigMap>::namespaced(client.clone(), ns)
                .patch(&b.names.bootstrap_config(), &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        Action::AddLearner { name } => {
            membership()?.add_learner(&b.names.peer_url(name)).await?;
        }
        Action::CreatePod { name } => {
            // The members it starts with: the cluster's, or (none answering,
            // all restarting together) every member that has a claim.
            let (initial, role) = match &obs.observed.cluster {
                Some(c) => {
                    let learner = c.members.iter().any(|m| m.pod.as_deref() == Some(name) && m.learner);
                    (
                        c.members.iter().filter_map(|m| m.pod.clone()).collect::<Vec<_>>(),
                        if learner { Role::Learner } else { Role::Voter },
                    )
                }
                None => (obs.observed.claims.iter().map(|c| c.name.clone()).collect(), Role::Voter),
            };
            ensure_claim(&claims, b, name).await?;
            create(&pods, &b.pod(name, &initial, role, false)).await?;
        }
        Action::ForceNewCluster { name } => {
            // Stopped soon (there is no quorum to hand anything over to; a
            // zero grace would drop the Pod object before its process is
            // gone), then started again from its data as a one-member cluster.
            let soon = DeleteParams { grace_period_seconds: Some(FORCE_RESTART_GRACE), ..Default::default() };
            pods.delete(name, &soon).await?;
            let deadline = tokio::time::Instant::now() + FORCE_RESTART_TIMEOUT;
            while pods.get_opt(name).await?.is_some() {
                if tokio::time::Instant::now() > deadline {
                    return Err(ActError::Stuck(format!("pod {name} was not gone after {FORCE_RESTART_TIMEOUT:?}")));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            create(&pods, &b.pod(name, std::slice::from_ref(name), Role::Voter, true)).await?;
        }
        Action::Promote { id, .. } => membership()?.promote(*id).await?,
        Action::MoveLeader { to, .. } => membership()?.move_leader(*to).await?,
        Action::RemoveMember { id, .. } => membership()?.remove(*id).await?,
        Action::DeletePod { name, .. } => delete(&pods, name).await?,
        Action::DeleteClaim { name } => delete(&claims, name).await?,
        Action::LockTarget(_) | Action::Wait { .. } | Action::Refuse { .. } | Action::Idle => {}
    }
    Ok(())
}

/// Keeps each member pod's role label equal to its raft role (the
/// disruption budget counts voters by it).
pub async fn label_roles(client: &Client, b: &Builder<'_>, obs: &Observation) -> Result<(), kube::Error> {
    let Some(cluster) = &obs.observed.cluster else { return Ok(()) };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &b.names.namespace);
    for p in &obs.pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        let Some(m) = cluster.members.iter().find(|m| m.pod.as_deref() == Some(&name)) else { continue };
        let role = if m.learner { Role::Learner } else { Role::Voter }.label();
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if labels.get(ROLE_LABEL).map(String::as_str) != Some(role) {
            let patch = json!({"metadata": {"labels": {ROLE_LABEL: role}}});
            pods.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
    }
    Ok(())
}

async fn ensure_claim(claims: &Api<PersistentVolumeClaim>, b: &Builder<'_>, name: &str) -> Result<(), kube::Error> {
    if b.cluster.spec.storage.ephemeral {
        return Ok(());
    }
    create(claims, &b.claim(name)).await
}

/// Creates an object; one that already exists (a step repeated after a
/// crash) is fine.
pub async fn create<K>(api: &Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes an object; one already gone is fine.
pub async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
