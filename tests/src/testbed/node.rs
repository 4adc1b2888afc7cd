//! The test bed's node agent, in the kubelet's place: it registers a Node
//! and keeps it Ready with heartbeats (its status and its Lease in
//! `kube-node-lease`, as a kubelet does), through kubectl.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::command::Output;
use crate::kube::Kubectl;

pub const NODE_NAME: &str = "node-1";
/// A kubelet's default status and lease update periods.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// RFC 3339 in UTC with microseconds (a MicroTime; a Time takes it too).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((d.as_secs() / 86_400) as i64, d.as_secs() % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        d.subsec_micros()
    )
}

fn must(out: Output, what: &str) -> Result<(), String> {
    if out.success {
        Ok(())
    } else {
        Err(format!("{what}: {}", out.stderr.trim()))
    }
}

/// The Node's status as this agent reports it now.
fn status(node_ip: &str) -> serde_json::Value {
    let now = rfc3339(SystemTime::now());
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": reason,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources = json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": NODE_NAME}],
        "nodeInfo": {"kubeletVersion": format!("v{}", crate::kube::KUBE_VERSION), "kubeProxyVersion": "",
                     "operatingSystem": "linux", "architecture": "amd64", "containerRuntimeVersion": "ferrocd-testbed://1",
                     "osImage": "local processes", "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
    }})
}

/// Creates the Node (if it is not there) and reports it Ready.
pub fn register(kubectl: &Kubectl, node_ip: &str) -> Result<(), String> {
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME, "labels": {
        "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}});
    let created = kubectl.run_with_input(&["create", "-f", "-"], &node.to_string());
    if !created.success && !created.stderr.contains("AlreadyExists") {
        return Err(format!("registering the node: {}", created.stderr.trim()));
    }
    heartbeat(kubectl, node_ip)
}

/// One heartbeat: the Node's status and its Lease, both renewed.
pub fn heartbeat(kubectl: &Kubectl, node_ip: &str) -> Result<(), String> {
    let patch = status(node_ip).to_string();
    must(
        kubectl.run(&["patch", "node", NODE_NAME, "--subresource=status", "--type=merge", "-p", &patch]),
        "node status",
    )?;
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NODE_NAME, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": NODE_NAME, "leaseDurationSeconds": 40, "renewTime": rfc3339(SystemTime::now())}});
    must(
        kubectl.run_with_input(
            &["apply", "--server-side", "--force-conflicts", "--field-manager=testbed-node", "-f", "-"],
            &lease.to_string(),
        ),
        "node lease",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_764_979_200_123_456);
        assert_eq!(rfc3339(t), "2025-12-06T00:00:00.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
    }
}
