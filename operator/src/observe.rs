//! Observation: a cluster's Kubernetes objects (its member pods and claims,
//! its bootstrap ConfigMap) and the cluster's own membership, turned into
//! what the planner decides on.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::crd::{EtcdCluster, Target};
use crate::members::{Access, Membership};
use crate::names::{Names, FORCED_ANNOTATION, REVISION_ANNOTATION};
use crate::plan::{ClaimView, Observed, PodView};
use crate::resources::{Builder, STATE_KEY};
use crate::tls;

/// A pod that is not ready crash-loops when this operator saw its
/// containers restart this many times within the window (a kubelet backs
/// off 10, 20, 40 s…: three restarts take about two minutes). A lifetime
/// restart count says nothing about when.
const CRASH_LOOP_RESTARTS: i32 = 3;
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(600);
/// Pods not seen for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Restart counts of member pods as seen over time, by pod UID.
#[derive(Default)]
pub struct RestartHistory(Mutex<HashMap<String, VecDeque<(i32, Instant)>>>);

impl RestartHistory {
    /// Notes a pod's restart count; returns how many restarts it made
    /// within the window (those before this operator first saw it count
    /// as none).
    fn restarts_within_window(&self, uid: &str, count: i32) -> i32 {
        let mut pods = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        pods.retain(|_, h| h.back().is_some_and(|(_, at)| at.elapsed() < FORGET_AFTER));
        let history = pods.entry(uid.to_string()).or_default();
        match history.back_mut() {
            Some((last, at)) if *last == count => *at = Instant::now(),
            _ => history.push_back((count, Instant::now())),
        }
        // The baseline: the newest count at least a window old (or the oldest known).
        while history.len() > 1 && history[1].1.elapsed() >= CRASH_LOOP_WINDOW {
            history.pop_front();
        }
        count - history.front().map_or(count, |(c, _)| *c)
    }
}

/// What one reconcile saw.
pub struct Observation {
    pub observed: Observed,
    /// None when no member answered.
    pub membership: Option<Membership>,
    pub pods: Vec<Pod>,
}

/// `quorum_loss_grace`: how long a lost quorum must last before the opt-in
/// recovery starts.
pub async fn observe(
    client: &Client,
    cluster: &EtcdCluster,
    b: &Builder<'_>,
    quorum_loss_grace: Duration,
    restarts: &RestartHistory,
) -> Result<Observation, kube::Error> {
    let names = &b.names;
    let ns = &names.namespace;
    let pods: Vec<Pod> = members_of(client, names).await?;
    let claims: Vec<PersistentVolumeClaim> = members_of(client, names).await?;
    let bootstrapped = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&names.bootstrap_config())
        .await?
        .and_then(|c| c.data)
        .and_then(|d| d.get(STATE_KEY).cloned())
        .is_some_and(|s| s == "existing")
        // A ConfigMap deleted and made again must not found a second cluster.
        || cluster.status.as_ref().is_some_and(|s| s.cluster_id.is_some());
    let ips: Vec<String> = pods.iter().filter_map(|p| p.status.as_ref()?.pod_ip.clone()).collect();
    let (access, tls_refusal) = match access(client, b).await? {
        Ok(access) => (Some(access), None),
        Err(refusal) => (None, Some(refusal)),
    };
    let membership = match &access {
        Some(access) if !ips.is_empty() => Membership::observe(&ips, access).await.ok(),
        _ => None,
    };
    let desired = Target {
        replicas: cluster.spec.replicas,
        revision: b.revision(),
        generation: cluster.metadata.generation.unwrap_or_default(),
    };
    let target = cluster.status.as_ref().and_then(|s| s.target.clone()).unwrap_or_else(|| desired.clone());
    let cluster_view = membership.as_ref().map(|m| m.view(names));
    let next = pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .chain(claims.iter().map(|c| c.metadata.name.clone().unwrap_or_default()))
        .chain(cluster_view.iter().flat_map(|c| c.members.iter().filter_map(|m| m.pod.clone())))
        .filter_map(|n| names.index_of(&n))
        .max()
        .map_or(0, |i| i + 1);
    let observed = Observed {
        target,
        desired,
        // Where the members' data is, not where the spec would put it.
        ephemeral: if pods.is_empty() { cluster.spec.storage.ephemeral } else { !on_claims(&pods) },
        bootstrapped,
        pods: pods.iter().map(|p| pod_view(p, restarts)).collect(),
        claims: claims
            .iter()
            .map(|c| ClaimView {
                name: c.metadata.name.clone().unwrap_or_default(),
                deleting: c.metadata.deletion_timestamp.is_some(),
            })
            .collect(),
        cluster: cluster_view,
        next_member: names.member(next),
        seed: names.member(0),
        recover_quorum: cluster.spec.quorum_loss_recovery,
        quorum_lost_for: quorum_lost_for(cluster),
        quorum_loss_grace,
        refusal: storage_refusal(cluster, &claims, &pods),
        blocked: tls_refusal.or_else(|| tls_change(cluster, names, &pods)),
    };
    Ok(Observation { observed, membership, pods })
}

/// How the operator reaches the members: over TLS with the certificate
/// of its Secret when clients use TLS. Err: why it cannot (a Secret the
/// spec names is missing or incomplete).
async fn access(client: &Client, b: &Builder<'_>) -> Result<Result<Access, String>, kube::Error> {
    let secrets = tls::Secrets::of(&b.names, b.cluster.spec.tls.as_ref());
    let api: Api<Secret> = Api::namespaced(client.clone(), &b.names.namespace);
    for (what, name) in [("tls.client", &secrets.client), ("tls.peer", &secrets.peer)] {
        if let Some(name) = name {
            if api.get_opt(name).await?.is_none() {
                return Ok(Err(format!("{what} names Secret {name}, which does not exist")));
            }
        }
    }
    // A spec that dropped TLS (refused) leaves the members on it: reach
    // them as the status last recorded.
    let recorded = || b.cluster.status.as_ref()?.tls.as_ref()?.operator_secret.clone();
    let Some(name) = secrets.operator.or_else(recorded) else { return Ok(Ok(Access::default())) };
    let Some(secret) = api.get_opt(&name).await? else {
        return Ok(Err(format!("the operator's client certificate Secret {name} does not exist")));
    };
    Ok(tls::client_options(&b.names, &secret).map(|tls| Access { tls: Some(tls) }).map_err(|e| e.to_string()))
}

/// TLS asked for where the members use none, or the other way round (what
/// the CRD's rules refuse on API servers that evaluate them): judged from
/// the running pods' flags, or, with no pod running (paused, all lost),
/// from what the status recorded once the cluster existed.
fn tls_change(cluster: &EtcdCluster, names: &Names, pods: &[Pod]) -> Option<String> {
    let args = |p: &Pod| -> Vec<String> {
        p.spec.iter().flat_map(|s| &s.containers).flat_map(|c| c.args.clone().unwrap_or_default()).collect()
    };
    let in_use = match pods.first().map(args) {
        Some(running) => {
            let uses = |flag: &str| running.iter().any(|a| a.starts_with(flag));
            (uses("--cert-file="), uses("--peer-cert-file="))
        }
        None => {
            let status = cluster.status.as_ref().filter(|s| s.cluster_id.is_some())?;
            let tls = status.tls.clone().unwrap_or_default();
            (tls.client_secret.is_some(), tls.peer_secret.is_some())
        }
    };
    let plane = |tls: bool| if tls { "TLS" } else { "plain text" };
    for (what, wanted, used) in [("clients", names.client_tls, in_use.0), ("peers", names.peer_tls, in_use.1)] {
        if used != wanted {
            return Some(format!(
                "tls cannot be changed on a running cluster: its members serve {what} in {}, the spec asks for {}",
                plane(used),
                plane(wanted)
            ));
        }
    }
    None
}

/// How long the last status has said the quorum is lost.
fn quorum_lost_for(cluster: &EtcdCluster) -> Option<Duration> {
    let conditions = &cluster.status.as_ref()?.conditions;
    let lost = conditions.iter().find(|c| c.type_ == "Available" && c.status == "False" && c.reason == "QuorumLost")?;
    Timestamp::now().duration_since(lost.last_transition_time.0).try_into().ok()
}

/// Whether the member pods keep their data in claims (not emptyDirs).
fn on_claims(pods: &[Pod]) -> bool {
    pods.iter()
        .any(|p| p.spec.iter().flat_map(|s| s.volumes.iter().flatten()).any(|v| v.persistent_volume_claim.is_some()))
}

/// A storage spec the members' volumes cannot follow (what the CRD's
/// transition rules refuse on API servers that evaluate them).
fn storage_refusal(cluster: &EtcdCluster, claims: &[PersistentVolumeClaim], pods: &[Pod]) -> Option<String> {
    let s = &cluster.spec.storage;
    if cluster.spec.replicas == 0 && s.ephemeral {
        return Some("an ephemeral cluster cannot be paused: its data lives only in its pods".into());
    }
    let on_claims = on_claims(pods);
    if !pods.is_empty() && s.ephemeral == on_claims {
        let (was, now) = if on_claims { ("claims", "emptyDirs") } else { ("emptyDirs", "claims") };
        return Some(format!(
            "storage.ephemeral cannot be changed on a running cluster: its members keep their data in {was}, the spec asks for {now}"
        ));
    }
    let spec = claims.first()?.spec.clone().unwrap_or_default();
    let size = spec.resources.and_then(|r| r.requests).and_then(|r| r.get("storage").cloned());
    if let Some(size) = size.filter(|size| *size != s.size) {
        return Some(format!(
            "storage.size cannot be changed on a running cluster (volumes cannot shrink, and growing them is not \
             supported yet): its claims request {}, the spec asks for {}",
            size.0, s.size.0
        ));
    }
    match (&s.storage_class_name, spec.storage_class_name) {
        (Some(wanted), Some(has)) if *wanted != has => Some(format!(
            "storage.storageClassName cannot be changed on a running cluster: its claims use {has}, the spec asks for {wanted}"
        )),
        _ => None,
    }
}

/// The cluster's objects of one kind that are named as members.
async fn members_of<K>(client: &Client, names: &Names) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let selector = ListParams::default().labels(&names.selector());
    let list = Api::<K>::namespaced(client.clone(), &names.namespace).list(&selector).await?;
    Ok(list.items.into_iter().filter(|o| o.meta().name.as_deref().and_then(|n| names.index_of(n)).is_some()).collect())
}

fn pod_view(p: &Pod, history: &RestartHistory) -> PodView {
    let status = p.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let restarts: i32 = status.container_statuses.iter().flatten().map(|c| c.restart_count).sum();
    let crash_looping = history.restarts_within_window(&uid, restarts) >= CRASH_LOOP_RESTARTS && !ready;
    PodView {
        name: p.metadata.name.clone().unwrap_or_default(),
        revision: p.metadata.annotations.as_ref().and_then(|a| a.get(REVISION_ANNOTATION).cloned()).unwrap_or_default(),
        ready,
        crash_looping,
        deleting: p.metadata.deletion_timestamp.is_some(),
        forced: p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(FORCED_ANNOTATION)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_count_from_when_the_operator_first_saw_the_pod() {
        let h = RestartHistory::default();
        // Seen first after 7 restarts long ago: none of them counts.
        assert_eq!(h.restarts_within_window("a", 7), 0);
        assert_eq!(h.restarts_within_window("a", 7), 0);
        assert_eq!(h.restarts_within_window("a", 8), 1);
        assert_eq!(h.restarts_within_window("a", 10), 3);
        // Another pod (a new UID after a re-creation) has its own count.
        assert_eq!(h.restarts_within_window("b", 2), 0);
    }
}
