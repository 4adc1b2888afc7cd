//! The `EtcdCluster` resource (group `ferrocd.io`, version `v1alpha1`): what
//! a person asks for (spec) and what the operator reports (status). The CRD
//! YAML under `crds/` is generated from these types by the `crdgen` binary.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A ferrocd cluster: `replicas` voting members, each one Pod and one
/// PersistentVolumeClaim owned by this object.
// Each printcolumn(...) names its own type_: not a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferrocd.io",
    version = "v1alpha1",
    kind = "EtcdCluster",
    namespaced,
    status = "EtcdClusterStatus",
    shortname = "etcd",
    category = "ferrocd",
    derive = "PartialEq",
    cel,
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyMembers"),
    printcolumn(name = "Members", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.readyMembers",
        label_selector_path = ".status.selector"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("has(self.tls) == has(oldSelf.tls)").message("tls cannot be added to or removed from a running cluster")
)]
pub struct EtcdClusterSpec {
    /// Voting members. Odd sizes tolerate the most failures for their cost
    /// (3 tolerates one, 5 tolerates two). 0 pauses the cluster: its pods are
    /// stopped (leader last), its volumes and membership kept.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 9))]
    pub replicas: i32,
    /// ferrocd version: the image tag when `image` is not given.
    #[serde(default = "default_version")]
    pub version: String,
    /// Full image reference; overrides `version`'s default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub storage: Storage,
    /// Compute resources of each member's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Server options, passed to every member as etcd's flags.
    #[serde(default)]
    pub options: ServerOptions,
    /// Labels and annotations added to every member's Pod.
    #[serde(default)]
    pub pod_metadata: PodMetadata,
    /// What happens to the members' volumes when this EtcdCluster is deleted.
    #[serde(default)]
    pub volume_retention: VolumeRetention,
    /// Opt-in recovery from a lost quorum: restart the most advanced
    /// surviving member with `--force-new-cluster`, then grow again. Off by
    /// default: a lost quorum is only reported.
    #[serde(default)]
    pub quorum_loss_recovery: bool,
    /// TLS for clients and peers, chosen when the cluster is created: it
    /// cannot be added, removed or changed later (every member would have
    /// to switch at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
}

/// TLS for a cluster's clients and peers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self == oldSelf").message("tls cannot be changed on a running cluster"),
    validation = Rule::new("!has(self.client) || !has(self.client.secretName) || has(self.client.operatorSecretName)").message("tls.client.secretName needs tls.client.operatorSecretName: the certificate the operator calls members with")
)]
pub struct ClusterTls {
    /// Clients reach members over https and must present a certificate
    /// signed by the client CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<TlsSource>,
    /// Members reach each other over https and verify each other's
    /// certificates with the peer CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<TlsSource>,
}

/// Where one plane's certificates come from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSource {
    /// A Secret with the members' certificate (`tls.crt`, `tls.key`,
    /// `ca.crt`, as cert-manager writes them), valid for
    /// `*.<cluster>.<namespace>.svc` (and, for clients,
    /// `<cluster>-client.<namespace>.svc`) and for client authentication
    /// too (a member stopping hands leadership over as a client). Members
    /// pick up a rotated Secret without a restart. Unset: the operator
    /// issues one from a CA of the cluster's own (Secret `<cluster>-ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Client TLS only: a Secret with the certificate the operator calls
    /// members with, signed by the client CA (common name `root` if auth
    /// will be enabled). Needed with `secretName`; unset, the operator
    /// issues its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_secret_name: Option<String>,
}

fn default_replicas() -> i32 {
    3
}

fn default_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Each member's volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.ephemeral == oldSelf.ephemeral").message("storage.ephemeral cannot be changed on a running cluster"),
    validation = Rule::new("!has(oldSelf.storageClassName) && !has(self.storageClassName) || has(oldSelf.storageClassName) && has(self.storageClassName) && self.storageClassName == oldSelf.storageClassName").message("storage.storageClassName cannot be changed on a running cluster"),
    validation = Rule::new("self.size == oldSelf.size").message("storage.size cannot be changed on a running cluster (volumes cannot shrink, and growing them is not supported yet)")
)]
pub struct Storage {
    /// Size of each member's PersistentVolumeClaim.
    #[serde(default = "default_size")]
    pub size: Quantity,
    /// StorageClass of the claims; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// An emptyDir instead of a claim: data lives as long as the Pod (tests
    /// and caches only: a deleted Pod's member is replaced).
    #[serde(default)]
    pub ephemeral: bool,
}

impl Default for Storage {
    fn default() -> Self {
        Storage { size: default_size(), storage_class_name: None, ephemeral: false }
    }
}

fn default_size() -> Quantity {
    Quantity("1Gi".into())
}

/// Where members may run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// etcd's server options, typed. Unset options keep ferrocd's defaults
/// (which are etcd's).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServerOptions {
    /// `--quota-backend-bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub quota_backend_bytes: Option<i64>,
    /// `--snapshot-count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub snapshot_count: Option<i64>,
    /// `--auto-compaction-mode`, used with `autoCompactionRetention`.
    #[serde(default)]
    pub auto_compaction_mode: CompactionMode,
    /// `--auto-compaction-retention` (e.g. `1h`, or a revision count for
    /// the revision mode); no automatic compaction when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_retention: Option<String>,
    /// `--heartbeat-interval`, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub heartbeat_interval: Option<i64>,
    /// `--election-timeout`, milliseconds (at least 5 heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub election_timeout: Option<i64>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CompactionMode {
    #[default]
    Periodic,
    Revision,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VolumeRetention {
    /// Claims are deleted with the cluster.
    #[default]
    Delete,
    /// Claims are kept (and must be deleted by hand).
    Retain,
}

/// What the operator sees and is doing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EtcdClusterStatus {
    /// Bootstrapping, Running, Scaling, Updating, Recovering, Paused,
    /// QuorumLost, Deleting.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Available (quorum healthy), Progressing (an operation in progress),
    /// Degraded (a member unhealthy or missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The leader's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Healthy voting members.
    #[serde(default)]
    pub ready_members: i32,
    /// The cluster ID, hexadecimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The server version the members run (the lowest when they differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Label selector of the member pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The spec an operation in progress works toward: a spec edited
    /// mid-operation waits until this one is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// The Secrets members and the operator use for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
}

/// The Secrets in use for TLS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// The members' client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The members' peer certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_secret: Option<String>,
    /// The certificate the operator calls members with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_secret: Option<String>,
}

/// One member, as the cluster and its Pod report it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The member's name: its Pod's name.
    pub name: String,
    /// The member ID, hexadecimal.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_urls: Vec<String>,
    pub learner: bool,
    pub leader: bool,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size: Option<i64>,
}

/// The locked target of an operation in progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub replicas: i32,
    /// Hash of the member pod template the spec asked for when the target
    /// was locked (pods are always made from the current spec's).
    pub revision: String,
    /// The spec generation this target was taken from.
    pub generation: i64,
}

/// The CRD as YAML, as `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&EtcdCluster::crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_committed_crd_is_what_the_types_generate() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/ferrocd.io_etcdclusters.yaml");
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let generated = crd_yaml().expect("the CRD serializes");
        assert!(
            committed == generated,
            "{} differs from what the Rust types generate: run \
             `cargo run -p ferrocd-operator --bin crdgen > crds/ferrocd.io_etcdclusters.yaml`",
            path.display()
        );
    }

    #[test]
    fn storage_rules_refuse_changes_that_volumes_cannot_follow() {
        let old = json!({"size": "10Gi", "ephemeral": false});
        let ok = Storage::validate_cel(&old, Some(&old));
        assert!(ok.is_ok(), "{ok:?}");
        for (new, why) in [
            (json!({"size": "5Gi", "ephemeral": false}), "storage.size"),
            (json!({"size": "10Gi", "ephemeral": true}), "storage.ephemeral"),
            (json!({"size": "10Gi", "ephemeral": false, "storageClassName": "fast"}), "storage.storageClassName"),
        ] {
            let err = Storage::validate_cel(&new, Some(&old)).expect_err("refused");
            assert!(format!("{err:?}").contains(why), "{new}: {err:?}");
        }
        // Creation has no old object: transition rules do not apply.
        assert!(Storage::validate_cel(&json!({"size": "5Gi", "ephemeral": true}), None).is_ok());
    }

    #[test]
    fn tls_rules_refuse_changes_and_a_named_secret_without_the_operators() {
        let old = json!({"client": {}, "peer": {}});
        assert!(ClusterTls::validate_cel(&old, Some(&old)).is_ok());
        let err = ClusterTls::validate_cel(&json!({"client": {}}), Some(&old)).expect_err("a change is refused");
        assert!(format!("{err:?}").contains("tls cannot be changed"), "{err:?}");
        let named = json!({"client": {"secretName": "main-tls"}});
        let err = ClusterTls::validate_cel(&named, None).expect_err("refused");
        assert!(format!("{err:?}").contains("operatorSecretName"), "{err:?}");
        let both = json!({"client": {"secretName": "main-tls", "operatorSecretName": "ops"}});
        assert!(ClusterTls::validate_cel(&both, None).is_ok());
        // Adding or removing tls as a whole is the spec's rule.
        let (plain, with) = (json!({"replicas": 3}), json!({"replicas": 3, "tls": {"client": {}}}));
        for (new, old) in [(&with, &plain), (&plain, &with)] {
            let err = EtcdClusterSpec::validate_cel(new, Some(old)).expect_err("refused");
            assert!(format!("{err:?}").contains("tls cannot be added to or removed"), "{err:?}");
        }
        assert!(EtcdClusterSpec::validate_cel(&with, Some(&with)).is_ok());
    }
}
