//! Leader election among operator replicas through a `coordination.k8s.io`
//! Lease, as Kubernetes' own controllers do it: the holder renews the Lease
//! every `RENEW_EVERY`; another replica takes it over once it has seen no
//! renewal for the Lease's duration (timed on its own clock, from when it saw
//! the record change, so clock skew between nodes does not matter). A holder
//! that cannot renew within the duration stops, so that two replicas never
//! act at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use thiserror::Error;

const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum LeaseError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("lost the leader lease {0} (not renewed within {LEASE_DURATION:?})")]
    Lost(String),
}

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
}

/// The last version of the Lease seen, and when it was first seen.
struct Seen {
    version: String,
    at: Instant,
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> LeaderElection {
        LeaderElection { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into() }
    }

    /// Returns once this replica holds the Lease.
    pub async fn acquire(&self) -> Result<(), LeaseError> {
        let mut seen: Option<Seen> = None;
        let mut told = false;
        loop {
            if self.try_hold(&mut seen).await? {
                tracing::info!(lease = %self.name, identity = %self.identity, "acquired the leader lease");
                return Ok(());
            }
            if !told {
                tracing::info!(lease = %self.name, "another replica holds the leader lease; waiting");
                told = true;
            }
            tokio::time::sleep(RENEW_EVERY / 2).await;
        }
    }

    /// Renews the Lease until it cannot; returns the reason.
    pub async fn hold(&self) -> LeaseError {
        let mut last_renewal = Instant::now();
        let mut seen = None;
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.try_hold(&mut seen).await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => return LeaseError::Lost(self.name.clone()),
                Err(e) => tracing::warn!(error = %e, "renewing the leader lease failed; retrying"),
            }
            if last_renewal.elapsed() >= LEASE_DURATION {
                return LeaseError::Lost(self.name.clone());
            }
        }
    }

    /// Gives the Lease up (on a clean stop) so that another replica takes
    /// over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
            tracing::warn!(error = %e, "releasing the leader lease failed");
        }
    }

    /// Takes or renews the Lease if this replica may; false when another
    /// replica holds it (or won a race for it).
    async fn try_hold(&self, seen: &mut Option<Seen>) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let duration = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if seen.as_ref().is_none_or(|s| s.version != version) {
            *seen = Some(Seen { version, at: Instant::now() });
        }
        let spec = lease.spec.get_or_insert_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_for = Duration::from_secs(spec.lease_duration_seconds.map_or(0, |d| d.max(0).unsigned_abs().into()));
        let expired = seen.as_ref().is_some_and(|s| s.at.elapsed() >= held_for);
        if holder != self.identity {
            if !holder.is_empty() && !expired {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(duration);
        // The resourceVersion makes this a compare-and-swap: of two replicas
        // racing for an expired Lease, one wins.
        conflict_is_false(self.api.replace(&self.name, &PostParams::default(), &lease).await)
    }
}

fn conflict_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
