//! How a cluster's objects and members are named. A member's name is its
//! Pod's name, `<cluster>-<index>`; its peer URL is the Pod's stable DNS name
//! under the cluster's headless Service, so the member list alone tells which
//! Pod each member is.

use std::collections::BTreeMap;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
pub const METRICS_PORT: u16 = 2381;

/// Label every object of a cluster carries, with the cluster's name.
pub const CLUSTER_LABEL: &str = "ferrocd.io/cluster";
/// A member pod's raft role: `voter` or `learner` (the PDB counts voters).
pub const ROLE_LABEL: &str = "ferrocd.io/role";
/// The member pod template revision a Pod was made from.
pub const REVISION_ANNOTATION: &str = "ferrocd.io/revision";
/// Marks the pod of a member restarted with `--force-new-cluster`.
pub const FORCED_ANNOTATION: &str = "ferrocd.io/force-new-cluster";
/// The finalizer that tears a cluster down in order.
pub const FINALIZER: &str = "ferrocd.io/teardown";
/// The field manager of the operator's server-side applies.
pub const MANAGER: &str = "ferrocd-operator";

/// A member URL: `http(s)://host:port`.
pub fn url(tls: bool, host: &str, port: u16) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}:{port}")
}

/// One cluster's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
    /// Members serve clients over https.
    pub client_tls: bool,
    /// Members reach each other over https.
    pub peer_tls: bool,
}

impl Names {
    pub fn new(cluster: &str, namespace: &str) -> Names {
        Names { cluster: cluster.to_string(), namespace: namespace.to_string(), client_tls: false, peer_tls: false }
    }

    /// The same names, with these planes on TLS.
    pub fn with_tls(self, client_tls: bool, peer_tls: bool) -> Names {
        Names { client_tls, peer_tls, ..self }
    }

    /// The headless Service that gives members their DNS names.
    pub fn peer_service(&self) -> String {
        self.cluster.clone()
    }

    /// The Service applications connect to.
    pub fn client_service(&self) -> String {
        format!("{}-client", self.cluster)
    }

    /// The ConfigMap telling starting members whether the cluster is new.
    pub fn bootstrap_config(&self) -> String {
        format!("{}-bootstrap", self.cluster)
    }

    pub fn disruption_budget(&self) -> String {
        self.cluster.clone()
    }

    pub fn member(&self, index: u32) -> String {
        format!("{}-{index}", self.cluster)
    }

    /// The index of a member name of this cluster.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        let digits = name.strip_prefix(&self.cluster)?.strip_prefix('-')?;
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        digits.parse().ok()
    }

    /// A member's DNS name: `<pod>.<headless service>.<namespace>.svc`.
    pub fn host(&self, member: &str) -> String {
        format!("{member}.{}.{}.svc", self.peer_service(), self.namespace)
    }

    pub fn peer_url(&self, member: &str) -> String {
        url(self.peer_tls, &self.host(member), PEER_PORT)
    }

    pub fn client_url(&self, member: &str) -> String {
        url(self.client_tls, &self.host(member), CLIENT_PORT)
    }

    /// The peer URL a member listens on at `ip`.
    pub fn peer_url_at(&self, ip: &str) -> String {
        url(self.peer_tls, ip, PEER_PORT)
    }

    /// A member's client URL at its pod IP.
    pub fn client_url_at(&self, ip: &str) -> String {
        url(self.client_tls, ip, CLIENT_PORT)
    }

    /// The member (Pod) name a peer URL of this cluster points at.
    pub fn member_of_peer_url(&self, url: &str) -> Option<String> {
        let host = url.split("://").nth(1)?.split([':', '/']).next()?;
        let (name, rest) = host.split_once('.')?;
        (rest == format!("{}.{}.svc", self.peer_service(), self.namespace) && self.index_of(name).is_some())
            .then(|| name.to_string())
    }

    /// Labels of every object of the cluster; also the member pod selector.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "ferrocd".to_string()),
            ("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string()),
            (CLUSTER_LABEL.to_string(), self.cluster.clone()),
        ])
    }

    /// The selector of the cluster's member pods, as a label query.
    pub fn selector(&self) -> String {
        self.labels().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_url_names_its_member_pod() {
        let n = Names::new("main", "db");
        assert_eq!(n.peer_url("main-3"), "http://main-3.main.db.svc:2380");
        assert_eq!(n.member_of_peer_url("http://main-3.main.db.svc:2380").as_deref(), Some("main-3"));
        for other in [
            "http://main-3.other.db.svc:2380",
            "http://main-3.main.other.svc:2380",
            "http://10.0.0.1:2380",
            "http://mainx-3.main.db.svc:2380",
            "http://main-03.main.db.svc:2380",
            "garbage",
        ] {
            assert_eq!(n.member_of_peer_url(other), None, "{other}");
        }
        assert_eq!(n.index_of("main-12"), Some(12));
        let tls = n.clone().with_tls(true, true);
        assert_eq!(tls.peer_url("main-3"), "https://main-3.main.db.svc:2380");
        assert_eq!(tls.member_of_peer_url("https://main-3.main.db.svc:2380").as_deref(), Some("main-3"));
        assert_eq!(tls.client_url_at("10.0.0.7"), "https://10.0.0.7:2379");
        assert_eq!(n.index_of("main-client"), None);
    }
}
