//! The Kubernetes objects of a cluster, built from its spec: each member's
//! Pod and claim, the headless and client Services, the bootstrap
//! ConfigMap and the quorum-aware PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapKeySelector, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, Probe,
    Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::crd::{CompactionMode, EtcdCluster, EtcdClusterSpec};
use crate::names::{Names, CLIENT_PORT, FORCED_ANNOTATION, METRICS_PORT, PEER_PORT, REVISION_ANNOTATION, ROLE_LABEL};
use crate::tls;

/// Where a member's TLS Secrets are mounted (`client/`, `peer/`).
const TLS_MOUNT: &str = "/etc/ferrocd/tls";
/// A file of a plane's mounted TLS Secret.
fn tls_file(plane: &str, file: &str) -> String {
    format!("{TLS_MOUNT}/{plane}/{file}")
}

/// Where a member's volume is mounted, and its data dir inside.
const DATA_MOUNT: &str = "/var/lib/ferrocd";
const DATA_DIR: &str = "/var/lib/ferrocd/data";
/// The user and group the ferrocd image runs as (distroless's nonroot).
const MEMBER_UID: i64 = 65532;
/// The bootstrap ConfigMap's key members read `ETCD_INITIAL_CLUSTER_STATE` from.
pub const STATE_KEY: &str = "initial-cluster-state";

/// What the operator builds objects with besides the spec.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Image repository used with `spec.version` when `spec.image` is unset.
    pub image_repository: String,
}

/// Everything a cluster's objects are built from.
pub struct Builder<'a> {
    pub cluster: &'a EtcdCluster,
    pub names: Names,
    pub defaults: &'a Defaults,
}

/// A member's raft role, as its Pod's label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Voter,
    Learner,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Learner => "learner",
        }
    }
}

impl<'a> Builder<'a> {
    pub fn new(cluster: &'a EtcdCluster, defaults: &'a Defaults) -> Builder<'a> {
        let tls = cluster.spec.tls.as_ref();
        let names = Names::new(&cluster.metadata.name.clone().unwrap_or_default(), &namespace(cluster))
            .with_tls(tls.is_some_and(|t| t.client.is_some()), tls.is_some_and(|t| t.peer.is_some()));
        Builder { cluster, names, defaults }
    }

    fn spec(&self) -> &EtcdClusterSpec {
        &self.cluster.spec
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.names.namespace.clone()),
            labels: Some(self.names.labels()),
            owner_references: Some(vec![self.owner()]),
            ..Default::default()
        }
    }

    fn owner(&self) -> OwnerReference {
        let m = &self.cluster.metadata;
        OwnerReference {
            api_version: EtcdCluster::api_version(&()).into_owned(),
            kind: EtcdCluster::kind(&()).into_owned(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    pub fn image(&self) -> String {
        self.spec()
            .image
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.defaults.image_repository, self.spec().version))
    }

    /// The hash of everything a member pod is made from except its name
    /// and membership: a change rolls the members.
    pub fn revision(&self) -> String {
        let s = self.spec();
        let mut parts =
            json!([self.image(), s.resources, s.scheduling, s.options, s.pod_metadata, s.storage.ephemeral]);
        // Only when set: clusters made before TLS existed keep their revision.
        if let (Some(tls), Some(list)) = (&s.tls, parts.as_array_mut()) {
            list.push(json!(tls));
        }
        let digest = Sha256::digest(parts.to_string().as_bytes());
        digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
    }

    /// `--initial-cluster-token`: unique to this EtcdCluster object.
    fn token(&self) -> String {
        format!("{}-{}", self.names.cluster, self.cluster.metadata.uid.clone().unwrap_or_default())
    }

    /// etcd's flags for a member.
    pub fn args(&self, name: &str, initial_cluster: &[String]) -> Vec<String> {
        let n = &self.names;
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={DATA_DIR}"),
            format!("--listen-client-urls={}", n.client_url_at("0.0.0.0")),
            format!("--advertise-client-urls={}", n.client_url(name)),
            format!("--listen-peer-urls={}", n.peer_url_at("0.0.0.0")),
            format!("--initial-advertise-peer-urls={}", n.peer_url(name)),
            format!("--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}"),
            format!(
                "--initial-cluster={}",
                initial_cluster.iter().map(|m| format!("{m}={}", n.peer_url(m))).collect::<Vec<_>>().join(",")
            ),
            format!("--initial-cluster-token={}", self.token()),
        ];
        // Certificates from the Secrets mounted under TLS_MOUNT, re-read by
        // the member when a rotation updates them.
        for (on, plane, prefix) in [(n.client_tls, "client", ""), (n.peer_tls, "peer", "peer-")] {
            if on {
                args.extend([
                    format!("--{prefix}cert-file={}", tls_file(plane, tls::CERT_KEY)),
                    format!("--{prefix}key-file={}", tls_file(plane, tls::KEY_KEY)),
                    format!("--{prefix}trusted-ca-file={}", tls_file(plane, tls::CA_KEY)),
                    format!("--{prefix}client-cert-auth"),
                ]);
            }
        }
        // Issued peer certificates come from the CA that also signs client
        // certificates: only the peers' own CN may be a peer.
        if let Some(cn) = tls::issued_peer_cn(n, self.spec().tls.as_ref()) {
            args.push(format!("--peer-cert-allowed-cn={cn}"));
        }
        let o = &self.spec().options;
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(format!("--{name}={v}"));
            }
        };
        flag("quota-backend-bytes", o.quota_backend_bytes.map(|v| v.to_string()));
        flag("snapshot-count", o.snapshot_count.map(|v| v.to_string()));
        if let Some(retention) = &o.auto_compaction_retention {
            let mode = match o.auto_compaction_mode {
                CompactionMode::Periodic => "periodic",
                CompactionMode::Revision => "revision",
            };
            flag("auto-compaction-mode", Some(mode.into()));
            flag("auto-compaction-retention", Some(retention.clone()));
        }
        flag("heartbeat-interval", o.heartbeat_interval.map(|v| v.to_string()));
        flag("election-timeout", o.election_timeout.map(|v| v.to_string()));
        args
    }

    /// A member's Pod. `initial_cluster` names the members it starts with
    /// (itself included); whether it founds or joins the cluster comes from
    /// the bootstrap ConfigMap, read each time its container starts.
    /// `forced`: started with `--force-new-cluster`, the way out of a lost
    /// quorum (the operator restarts it without once it leads alone).
    pub fn pod(&self, name: &str, initial_cluster: &[String], role: Role, forced: bool) -> Pod {
        let s = self.spec();
        let mut meta = self.meta(name);
        let labels = meta.labels.get_or_insert_default();
        labels.extend(s.pod_metadata.labels.clone());
        labels.extend(self.names.labels());
        labels.insert(ROLE_LABEL.into(), role.label().into());
        let mut annotations = s.pod_metadata.annotations.clone();
        annotations.insert(REVISION_ANNOTATION.into(), self.revision());
        let mut args = self.args(name, initial_cluster);
        if forced {
            annotations.insert(FORCED_ANNOTATION.into(), "true".into());
            args.push("--force-new-cluster".into());
        }
        meta.annotations = Some(annotations);
        let port = |name: &str, port: u16| ContainerPort {
            name: Some(name.into()),
            container_port: port.into(),
            ..Default::default()
        };
        let state = EnvVar {
            name: "ETCD_INITIAL_CLUSTER_STATE".into(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: self.names.bootstrap_config(),
                    key: STATE_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container = Container {
            name: "ferrocd".into(),
            image: Some(self.image()),
            command: Some(vec!["ferrocd".into()]),
            args: Some(args),
            env: Some(vec![state]),
            ports: Some(vec![port("client", CLIENT_PORT), port("peer", PEER_PORT), port("metrics", METRICS_PORT)]),
            readiness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some("/readyz".into()),
                    port: IntOrString::Int(METRICS_PORT.into()),
                    ..Default::default()
                }),
                period_seconds: Some(2),
                failure_threshold: Some(3),
                ..Default::default()
            }),
            // A leader hands leadership over before it is stopped (drains,
            // manual deletes); ferrocd also does so itself on SIGTERM.
            lifecycle: Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    exec: Some(ExecAction { command: Some(self.hand_over(name)) }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: s.resources.clone(),
            volume_mounts: Some(self.mounts()),
            ..Default::default()
        };
        let data = if s.storage.ephemeral {
            Volume { name: "data".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }
        } else {
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: name.into(),
                    read_only: None,
                }),
                ..Default::default()
            }
        };
        let sched = &s.scheduling;
        Pod {
            metadata: meta,
            spec: Some(PodSpec {
                hostname: Some(name.into()),
                subdomain: Some(self.names.peer_service()),
                containers: vec![container],
                volumes: Some(
                    std::iter::once(data)
                        .chain(self.tls_volumes().into_iter().map(|(plane, secret)| Volume {
                            name: format!("{plane}-tls"),
                            // Keys readable by the member's group only (fsGroup).
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(secret),
                                default_mode: Some(0o440),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }))
                        .collect(),
                ),
                affinity: Some(sched.affinity.clone().unwrap_or_else(|| self.spread())),
                tolerations: (!sched.tolerations.is_empty()).then(|| sched.tolerations.clone()),
                topology_spread_constraints: (!sched.topology_spread_constraints.is_empty())
                    .then(|| sched.topology_spread_constraints.clone()),
                node_selector: (!sched.node_selector.is_empty()).then(|| sched.node_selector.clone()),
                priority_class_name: sched.priority_class_name.clone(),
                // A crashed member restarts in place; the operator replaces one
                // that keeps crashing.
                restart_policy: Some("Always".into()),
                // The image runs as an unprivileged user; the volume is made
                // writable for its group.
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(MEMBER_UID),
                    run_as_group: Some(MEMBER_UID),
                    fs_group: Some(MEMBER_UID),
                    ..Default::default()
                }),
                termination_grace_period_seconds: Some(60),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The data volume, and the TLS Secrets (read-only).
    fn mounts(&self) -> Vec<VolumeMount> {
        let data = VolumeMount { name: "data".into(), mount_path: DATA_MOUNT.into(), ..Default::default() };
        let tls = self.tls_volumes().into_iter().map(|(plane, _)| VolumeMount {
            name: format!("{plane}-tls"),
            mount_path: format!("{TLS_MOUNT}/{plane}"),
            read_only: Some(true),
            ..Default::default()
        });
        std::iter::once(data).chain(tls).collect()
    }

    /// A Secret of this cluster (the CA, or an issued certificate), owned
    /// by it so that it goes with it.
    pub fn secret(&self, name: &str, type_: &str, data: BTreeMap<String, k8s_openapi::ByteString>) -> Secret {
        Secret { metadata: self.meta(name), type_: Some(type_.into()), data: Some(data), ..Default::default() }
    }

    /// The Secrets of the planes on TLS: (plane, Secret).
    fn tls_volumes(&self) -> Vec<(String, String)> {
        let secrets = tls::Secrets::of(&self.names, self.spec().tls.as_ref());
        [("client", secrets.client), ("peer", secrets.peer)]
            .into_iter()
            .filter_map(|(plane, secret)| Some((plane.to_string(), secret?)))
            .collect()
    }

    /// The preStop hook: hands leadership over if the member leads (over
    /// TLS with the member's own certificate, which is valid for clients too).
    fn hand_over(&self, name: &str) -> Vec<String> {
        let mut command =
            vec!["ferrocdutl".into(), "hand-over".into(), format!("--endpoint={}", self.names.client_url(name))];
        if self.names.client_tls {
            command.extend([
                format!("--cacert={}", tls_file("client", tls::CA_KEY)),
                format!("--cert={}", tls_file("client", tls::CERT_KEY)),
                format!("--key={}", tls_file("client", tls::KEY_KEY)),
            ]);
        }
        command
    }

    /// By default members prefer different nodes.
    fn spread(&self) -> Affinity {
        Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(self.names.labels()),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn claim(&self, name: &str) -> PersistentVolumeClaim {
        let s = &self.spec().storage;
        PersistentVolumeClaim {
            metadata: self.meta(name),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: s.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), s.size.clone())])),
                    limits: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn service_port(name: &str, port: u16) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port: port.into(),
            // Server-side apply keys ports by port and protocol; API servers
            // before 1.20's defaulting fix refuse an apply without it.
            protocol: Some("TCP".into()),
            target_port: Some(IntOrString::Int(port.into())),
            ..Default::default()
        }
    }

    /// The headless Service giving every member a DNS name, ready or not
    /// (members must reach each other to become ready).
    pub fn peer_service(&self) -> Service {
        Service {
            metadata: self.meta(&self.names.peer_service()),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(true),
                selector: Some(self.names.labels()),
                ports: Some(vec![Self::service_port("peer", PEER_PORT), Self::service_port("client", CLIENT_PORT)]),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The Service applications use: ready members only.
    pub fn client_service(&self) -> Service {
        Service {
            metadata: self.meta(&self.names.client_service()),
            spec: Some(ServiceSpec {
                selector: Some(self.names.labels()),
                ports: Some(vec![Self::service_port("client", CLIENT_PORT)]),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The bootstrap ConfigMap: the cluster is new, or (made again after
    /// it was deleted) it `exists`.
    pub fn bootstrap_config(&self, exists: bool) -> ConfigMap {
        let state = if exists { "existing" } else { "new" };
        ConfigMap {
            metadata: self.meta(&self.names.bootstrap_config()),
            data: Some(BTreeMap::from([(STATE_KEY.to_string(), state.to_string())])),
            ..Default::default()
        }
    }

    /// A PodDisruptionBudget over the voters keeping a quorum of them up;
    /// None for fewer than 2 voters (it could only block every drain).
    /// `api_version` is `policy/v1`, or `policy/v1beta1` where the API
    /// server has no v1.
    pub fn disruption_budget(&self, voters: i32, api_version: &str) -> Option<Value> {
        if voters < 2 {
            return None;
        }
        let mut selector = self.names.labels();
        selector.insert(ROLE_LABEL.into(), Role::Voter.label().into());
        let mut spec = json!({"minAvailable": voters / 2 + 1, "selector": {"matchLabels": selector}});
        if api_version == "policy/v1" {
            spec["unhealthyPodEvictionPolicy"] = json!("IfHealthyBudget");
        }
        Some(json!({
            "apiVersion": api_version,
            "kind": "PodDisruptionBudget",
            "metadata": self.meta(&self.names.disruption_budget()),
            "spec": spec,
        }))
    }
}

pub fn namespace(cluster: &EtcdCluster) -> String {
    cluster.metadata.namespace.clone().unwrap_or_else(|| "default".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(spec: serde_json::Value) -> EtcdCluster {
        serde_json::from_value(json!({
            "apiVersion": "ferrocd.io/v1alpha1",
            "kind": "EtcdCluster",
            "metadata": {"name": "main", "namespace": "db", "uid": "u1"},
            "spec": spec,
        }))
        .expect("an EtcdCluster")
    }

    #[test]
    fn a_tls_cluster_runs_https_with_its_secrets_mounted() {
        let defaults = Defaults { image_repository: "ferrocd".into() };
        let c = cluster(json!({"tls": {"client": {}, "peer": {"secretName": "own-peer"}}}));
        let b = Builder::new(&c, &defaults);
        let pod = b.pod("main-0", &["main-0".into()], Role::Voter, false);
        let spec = pod.spec.expect("spec");
        let container = &spec.containers[0];
        let args = container.args.clone().unwrap_or_default().join(" ");
        for wanted in [
            "--advertise-client-urls=https://main-0.main.db.svc:2379",
            "--initial-cluster=main-0=https://main-0.main.db.svc:2380",
            "--cert-file=/etc/ferrocd/tls/client/tls.crt",
            "--client-cert-auth",
            "--peer-trusted-ca-file=/etc/ferrocd/tls/peer/ca.crt",
            "--peer-client-cert-auth",
            // Probes stay on the plain metrics port.
            "--listen-metrics-urls=http://0.0.0.0:2381",
        ] {
            assert!(args.contains(wanted), "{wanted} in {args}");
        }
        let secrets: Vec<_> =
            spec.volumes.iter().flatten().filter_map(|v| v.secret.as_ref()?.secret_name.clone()).collect();
        assert_eq!(secrets, ["main-client-tls", "own-peer"]);
        let hook = container.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).and_then(|h| h.exec.as_ref());
        let hook = hook.and_then(|e| e.command.clone()).unwrap_or_default().join(" ");
        assert!(hook.contains("--endpoint=https://main-0.main.db.svc:2379") && hook.contains("--cacert="), "{hook}");
        assert!(!args.contains("--peer-cert-allowed-cn"), "a named peer Secret: any CN its CA signed: {args}");
        let issued = cluster(json!({"tls": {"peer": {}}}));
        let args = Builder::new(&issued, &defaults).args("main-0", &["main-0".into()]).join(" ");
        assert!(args.contains("--peer-cert-allowed-cn=main-peer"), "{args}");
        // Without TLS, nothing of it.
        let plain = cluster(json!({}));
        let b = Builder::new(&plain, &defaults);
        let args = b.args("main-0", &["main-0".into()]).join(" ");
        assert!(!args.contains("https") && !args.contains("cert"), "{args}");
    }
}
