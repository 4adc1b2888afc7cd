//! The EtcdCluster controller: for each cluster, keep its supporting
//! objects (Services, bootstrap ConfigMap, disruption budget), observe,
//! plan one step, act, report status and an Event; tear down in order when
//! the cluster is deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use thiserror::Error;

use crate::act::{self, ActError};
use crate::crd::{EtcdCluster, EtcdClusterStatus, VolumeRetention};
use crate::metrics::Metrics;
use crate::names::{FINALIZER, MANAGER};
use crate::observe::{observe, RestartHistory};
use crate::plan::{plan, Action};
use crate::resources::{Builder, Defaults};
use crate::status::{describe, status};
use crate::tls;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{what} failed: {source}")]
    Step {
        what: String,
        #[source]
        source: ActError,
    },
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub reporter: Reporter,
    pub metrics: Metrics,
    /// `policy/v1`, or `policy/v1beta1` on API servers before 1.21.
    pub pdb_api: ApiResource,
    /// How long a lost quorum lasts before an opted-in recovery starts.
    pub quorum_loss_grace: Duration,
    /// When each cluster's (by UID) status was last written: a change of
    /// the members' db sizes alone is written at most every
    /// `SIZES_REFRESH` (each status write triggers a reconcile, and sizes
    /// change all the time under load).
    status_writes: Mutex<HashMap<String, Instant>>,
    restarts: RestartHistory,
}

const SIZES_REFRESH: Duration = Duration::from_secs(30);

impl Context {
    pub async fn new(
        client: Client,
        defaults: Defaults,
        metrics: Metrics,
        quorum_loss_grace: Duration,
    ) -> Result<Context, kube::Error> {
        let version = match client.list_api_group_resources("policy/v1").await {
            Ok(list) if list.resources.iter().any(|r| r.name == "poddisruptionbudgets") => "v1",
            _ => "v1beta1",
        };
        let pdb_api = ApiResource {
            group: "policy".into(),
            version: version.into(),
            api_version: format!("policy/{version}"),
            kind: "PodDisruptionBudget".into(),
            plural: "poddisruptionbudgets".into(),
        };
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        let status_writes = Mutex::default();
        let restarts = RestartHistory::default();
        Ok(Context { reporter, client, defaults, metrics, pdb_api, quorum_loss_grace, status_writes, restarts })
    }
}

/// Runs the controller until a termination signal.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (clusters, pods, claims) = match &namespace {
        Some(ns) => (
            Api::<EtcdCluster>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
    };
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=ferrocd-operator");
    Controller::new(clusters, watcher::Config::default())
        .owns(pods, owned.clone())
        .owns(claims, owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
}

fn error_policy(cluster: Arc<EtcdCluster>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile("error");
    tracing::warn!(cluster = %cluster.name_any(), namespace = ?cluster.namespace(), %error, "reconcile failed");
    Requeue::requeue(Duration::from_secs(5))
}

async fn reconcile(cluster: Arc<EtcdCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let b = Builder::new(&cluster, &ctx.defaults);
    let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &b.names.namespace);
    let finalizers = cluster.finalizers();
    let ours = finalizers.iter().any(|f| f == FINALIZER);
    let requeue = if cluster.metadata.deletion_timestamp.is_some() {
        if ours {
            teardown(&ctx, &api, &b).await?
        } else {
            Requeue::await_change()
        }
    } else if !ours {
        let mut list = finalizers.to_vec();
        list.push(FINALIZER.into());
        let patch = json!({"metadata": {"finalizers": list, "resourceVersion": cluster.resource_version()}});
        api.patch(&b.names.cluster, &PatchParams::default(), &Patch::Merge(patch)).await?;
        Requeue::requeue(Duration::ZERO)
    } else {
        match step(&ctx, &api, &b).await {
            Ok(requeue) => requeue,
            Err(e) => {
                report_failure(&ctx, &api, &cluster, &e).await;
                return Err(e);
            }
        }
    };
    ctx.metrics.reconciled(started.elapsed());
    Ok(requeue)
}

/// One observe → plan → act → status round.
async fn step(ctx: &Context, api: &Api<EtcdCluster>, b: &Builder<'_>) -> Result<Requeue, Error> {
    let cluster = b.cluster;
    ensure_supporting_objects(ctx, b).await?;
    ensure_certificates(ctx, b).await?;
    let obs = observe(&ctx.client, cluster, b, ctx.quorum_loss_grace, &ctx.restarts).await?;
    act::label_roles(&ctx.client, b, &obs).await?;
    ensure_disruption_budget(ctx, b, &obs).await?;
    let action = plan(&obs.observed);
    let outcome = act::act(&ctx.client, b, &obs, &action).await;
    let (reason, message) = describe(&action);
    let shown = outcome.as_ref().map(|_| ()).map_err(ToString::to_string);
    let mut new_status = status(&b.names, cluster.metadata.generation, cluster.status.as_ref(), &obs, &action, &shown);
    // What is in use: the spec's Secrets, unless the spec is refused (a
    // TLS change), when the members keep what they had.
    new_status.tls = match obs.observed.blocked {
        Some(_) => cluster.status.as_ref().and_then(|s| s.tls.clone()),
        None => tls::Secrets::of(&b.names, cluster.spec.tls.as_ref()).status(),
    };
    // A failed step is reported by `report_failure` alone: writing this
    // status too would make the two alternate.
    let failed = outcome.as_ref().is_err_and(|e| !e.is_transient());
    if !failed && ctx.status_due(cluster, &new_status) {
        write_status(api, &b.names.cluster, &new_status).await?;
    }
    ctx.metrics.observe_cluster(&b.names, &new_status);
    let acted = !matches!(action, Action::Wait { .. } | Action::Refuse { .. } | Action::Idle);
    match outcome {
        Ok(()) if acted => {
            tracing::info!(cluster = %b.names.cluster, namespace = %b.names.namespace, reason, message, "step");
            ctx.metrics.action(reason);
            event(ctx, cluster, EventType::Normal, reason, &message).await;
            ctx.metrics.reconcile("acted");
            Ok(Requeue::requeue(Duration::from_millis(500)))
        }
        Ok(()) if matches!(action, Action::Idle) => {
            ctx.metrics.reconcile("idle");
            Ok(Requeue::requeue(Duration::from_secs(30)))
        }
        Ok(()) => {
            tracing::info!(cluster = %b.names.cluster, namespace = %b.names.namespace, reason = %message, "waiting");
            ctx.metrics.reconcile("waiting");
            Ok(Requeue::requeue(Duration::from_secs(2)))
        }
        Err(e) if e.is_transient() => {
            tracing::info!(cluster = %b.names.cluster, reason, error = %e, "step refused for now; retrying");
            ctx.metrics.reconcile("retry");
            Ok(Requeue::requeue(Duration::from_secs(2)))
        }
        Err(e) => Err(Error::Step { what: message, source: e }),
    }
}

impl Context {
    /// Whether `new` should be written over the cluster's status: it
    /// differs in more than the members' db sizes, or their last write is
    /// `SIZES_REFRESH` old. Notes the write.
    fn status_due(&self, cluster: &EtcdCluster, new: &EtcdClusterStatus) -> bool {
        let Some(old) = &cluster.status else { return true };
        if old == new {
            return false;
        }
        let without_sizes = |s: &EtcdClusterStatus| {
            let mut s = s.clone();
            s.members.iter_mut().for_each(|m| m.db_size = None);
            s
        };
        let uid = cluster.metadata.uid.clone().unwrap_or_default();
        let mut writes = self.status_writes.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = writes.get(&uid).is_none_or(|at| at.elapsed() >= SIZES_REFRESH);
        let due = stale || without_sizes(old) != without_sizes(new);
        if due {
            writes.insert(uid, Instant::now());
        }
        due
    }
}

async fn write_status(api: &Api<EtcdCluster>, name: &str, status: &EtcdClusterStatus) -> Result<(), kube::Error> {
    let patch = json!({"apiVersion": EtcdCluster::api_version(&()), "kind": EtcdCluster::kind(&()), "status": status});
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(patch)).await.map(drop)
}

/// A reconcile that failed (an API call refused, for instance for missing
/// permissions, or a step that failed): the next attempt comes after a
/// back-off; meanwhile the Progressing condition and a Warning Event say why.
async fn report_failure(ctx: &Context, api: &Api<EtcdCluster>, cluster: &EtcdCluster, error: &Error) {
    const REASON: &str = "ReconcileFailed";
    let message = error.to_string();
    let mut s = cluster.status.clone().unwrap_or_default();
    let progressing = Condition {
        type_: "Progressing".into(),
        status: "True".into(),
        reason: REASON.into(),
        message: message.clone(),
        observed_generation: cluster.metadata.generation,
        last_transition_time: Time(Timestamp::now()),
    };
    match s.conditions.iter_mut().find(|c| c.type_ == "Progressing") {
        Some(c) if c.reason == REASON && c.message == message => return,
        Some(c) => *c = progressing,
        None => s.conditions.push(progressing),
    }
    if let Err(e) = write_status(api, &cluster.name_any(), &s).await {
        tracing::warn!(error = %e, "could not report the failure in the status");
    }
    event(ctx, cluster, EventType::Warning, REASON, &message).await;
}

async fn event(ctx: &Context, cluster: &EtcdCluster, type_: EventType, reason: &str, note: &str) {
    let ev = Event { type_, reason: reason.into(), note: Some(note.into()), action: reason.into(), secondary: None };
    // A recorder of its own for each Event: a shared one folds Events of
    // the same reason into one series that keeps the first note, and each
    // step's note (which member) matters.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&ev, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

/// The Services (applied: kept as the operator builds them) and the
/// bootstrap ConfigMap (created once: it records that the cluster exists).
async fn ensure_supporting_objects(ctx: &Context, b: &Builder<'_>) -> Result<(), kube::Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &b.names.namespace);
    let apply = PatchParams::apply(MANAGER).force();
    for svc in [b.peer_service(), b.client_service()] {
        services.patch(&svc.name_any(), &apply, &Patch::Apply(&svc)).await?;
    }
    let configs: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &b.names.namespace);
    let exists = b.cluster.status.as_ref().is_some_and(|s| s.cluster_id.is_some());
    act::create(&configs, &b.bootstrap_config(exists)).await
}

/// The certificates the spec leaves to the operator: issued once from the
/// cluster's own CA (made first), kept in Secrets the cluster owns.
async fn ensure_certificates(ctx: &Context, b: &Builder<'_>) -> Result<(), Error> {
    let wanted = tls::to_issue(&b.names, b.cluster.spec.tls.as_ref());
    if wanted.is_empty() {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &b.names.namespace);
    let wanted_count = wanted.len();
    let mut missing = Vec::new();
    for w in wanted {
        if api.get_opt(&w.0).await?.is_none() {
            missing.push(w);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let ca_name = tls::ca_secret(&b.names);
    let ca = match api.get_opt(&ca_name).await?.and_then(|s| s.data) {
        Some(data) => data,
        // A new CA beside certificates the lost one issued would split the
        // cluster into two trust domains.
        None if missing.len() < wanted_count => return Err(tls::TlsError::CaLost { ca: ca_name }.into()),
        None => {
            let (cert, key) = tls::new_ca(&b.names)?;
            let data = tls::ca_data(&cert, &key);
            act::create(&api, &b.secret(&ca_name, "Opaque", data)).await?;
            // Another operator replica may have made it first: use theirs.
            api.get(&ca_name).await?.data.unwrap_or_default()
        }
    };
    for (name, common_name, client_only) in missing {
        let data = tls::issue(&b.names, &ca_name, &ca, &common_name, client_only)?;
        act::create(&api, &b.secret(&name, "kubernetes.io/tls", data)).await?;
        tracing::info!(cluster = %b.names.cluster, secret = %name, "issued a certificate");
    }
    Ok(())
}

/// A budget keeping a quorum of voters up: sized on the larger of the
/// voters there are and the voters wanted.
async fn ensure_disruption_budget(
    ctx: &Context,
    b: &Builder<'_>,
    obs: &crate::observe::Observation,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &b.names.namespace, &ctx.pdb_api);
    let voters = obs.observed.cluster.as_ref().map_or(0, |c| c.members.iter().filter(|m| !m.learner).count());
    let wanted = i32::try_from(voters).unwrap_or(i32::MAX).max(obs.observed.target.replicas);
    match b.disruption_budget(wanted, &ctx.pdb_api.api_version) {
        Some(pdb) => {
            api.patch(&b.names.disruption_budget(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(pdb)).await?;
        }
        None => act::delete(&api, &b.names.disruption_budget()).await?,
    }
    Ok(())
}

/// Deletion: every member pod stops, then the claims go (or are kept and
/// released, per `volumeRetention`), then the finalizer is removed.
async fn teardown(ctx: &Context, api: &Api<EtcdCluster>, b: &Builder<'_>) -> Result<Requeue, Error> {
    let ns = &b.names.namespace;
    let selector = ListParams::default().labels(&b.names.selector());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let running = pods.list(&selector).await?.items;
    if !running.is_empty() {
        for p in running.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            act::delete(&pods, &p.name_any()).await?;
        }
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    for c in claims.list(&selector).await?.items {
        match b.cluster.spec.volume_retention {
            VolumeRetention::Delete => act::delete(&claims, &c.name_any()).await?,
            VolumeRetention::Retain => {
                let patch = json!({"metadata": {"ownerReferences": []}});
                claims.patch(&c.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
        }
    }
    let left: Vec<String> = b.cluster.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    let patch = json!({"metadata": {"finalizers": left, "resourceVersion": b.cluster.resource_version()}});
    api.patch(&b.names.cluster, &PatchParams::default(), &Patch::Merge(patch)).await?;
    event(ctx, b.cluster, EventType::Normal, "Deleted", "every member stopped; the cluster is gone").await;
    Ok(Requeue::await_change())
}
