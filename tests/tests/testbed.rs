//! The local Kubernetes test bed: a real control plane on ferrocd and a
//! node that registers and stays Ready; `scripts/kube-testbed.sh up|down`
//! brings the same up for a person and leaves nothing running.

use std::process::Command;
use std::time::Duration;

use ferrocd_tests::kube::Kubectl;
use ferrocd_tests::testbed::{node, Fault, TestBed};
use ferrocd_tests::tools;

fn alive(pid: &str) -> bool {
    Command::new("kill").args(["-0", pid]).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registers_and_stays_ready_on_a_control_plane_on_ferrocd() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(bed) = TestBed::start(dir.path()).await else { return };
    let nodes = bed.kubectl(&["get", "nodes", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&nodes.stdout).expect("nodes JSON");
    let names: Vec<&str> =
        nodes["items"].as_array().expect("items").iter().filter_map(|n| n["metadata"]["name"].as_str()).collect();
    assert_eq!(names, [node::NODE_NAME]);
    // Past the node lifecycle controller's 40 s grace period, it is still
    // Ready: the heartbeats (status and Lease) keep it so.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let ready = bed.kubectl(&[
        "get",
        "node",
        node::NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready.stdout.trim(), "True", "{}", ready.stderr);
    // The controllers work: a namespace gets its default service account token.
    assert!(bed.kubectl(&["create", "namespace", "t"]).success);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sa = bed.kubectl(&["get", "serviceaccount", "default", "-n", "t", "-o", "jsonpath={.secrets[0].name}"]);
        if !sa.stdout.trim().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no token for the new namespace's service account");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bed.stop();
}

/// The script's test bed in a directory of its own, taken down however
/// the test ends.
struct ScriptBed {
    dir: tempfile::TempDir,
}

impl ScriptBed {
    fn run(&self, arg: &str) -> std::process::Output {
        let script = tools::workspace_root().join("scripts/kube-testbed.sh");
        Command::new(script).arg(arg).env("TESTBED_DIR", self.dir.path()).output().expect("run kube-testbed.sh")
    }
}

impl Drop for ScriptBed {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

#[test]
fn the_script_brings_the_test_bed_up_and_down() {
    if tools::require_tool("kubectl").is_none() {
        return;
    }
    let bed = ScriptBed { dir: tempfile::tempdir().expect("dir") };
    let dir = &bed.dir;
    let run = |arg: &str| bed.run(arg);
    let up = run("up");
    let log = std::fs::read_to_string(dir.path().join("testbed.log")).unwrap_or_default();
    if !up.status.success() && log.contains("SKIPPED") {
        return;
    }
    assert!(up.status.success(), "up failed: {}\n{log}", String::from_utf8_lossy(&up.stderr));
    let kubeconfig = String::from_utf8_lossy(&up.stdout).trim().to_string();
    assert!(
        std::path::Path::new(&kubeconfig).is_absolute() && std::path::Path::new(&kubeconfig).is_file(),
        "{kubeconfig}"
    );
    let pid = std::fs::read_to_string(dir.path().join("testbed.pid")).expect("pid file").trim().to_string();
    let kubectl = Kubectl::new(tools::require_tool("kubectl").expect("kubectl"), kubeconfig.into(), dir.path().into());
    let shown = kubectl.run(&["get", "nodes"]).stdout;
    // A pod runs on the node until down.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: sleeper}\nspec: {containers: [{name: s, image: busybox, command: [sleep, '3600']}]}\n";
    assert!(kubectl.run_with_input(&["apply", "-f", "-"], pod).success);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while kubectl.run(&["get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"]).stdout != "Running" {
        assert!(std::time::Instant::now() < deadline, "the pod never ran");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The container's launcher (ip netns exec, unshare, sh) execs its
    // command a moment after the pod is reported running.
    let sleeper = loop {
        let found = Command::new("pgrep").args(["-f", "-s", &pid, "^sleep 3600$"]).output().expect("pgrep");
        let found = String::from_utf8_lossy(&found.stdout).trim().to_string();
        if !found.is_empty() {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "the pod's process is not running");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Read everything the test bed started before taking it down.
    let children = Command::new("pgrep")
        .args(["-s", &pid])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let down = run("down");
    assert!(down.status.success(), "down failed: {}", String::from_utf8_lossy(&down.stderr));
    assert!(shown.contains(node::NODE_NAME) && shown.contains("Ready"), "kubectl get nodes: {shown}");
    assert!(!alive(&pid), "the test bed still runs after down");
    assert!(children.contains(&sleeper), "the pod's process {sleeper} is not in the test bed's session: {children}");
    let left: Vec<&str> = children.lines().filter(|p| alive(p)).collect();
    assert!(left.is_empty(), "processes left running after down: {left:?}");
}

const STATEFUL_SET: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: default}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: busybox
        command:
        - sh
        - -c
        - |
          echo "$HOSTNAME" >> /var/lib/testbed-web/boots
          python3 -m http.server 8080 --bind 0.0.0.0 --directory /var/lib/testbed-web >/dev/null 2>&1 &
          while true; do
            { for p in web-0 web-1 web-2; do getent hosts "$p.web.default.svc.cluster.local"; done
              getent hosts web.default.svc.cluster.local; } > /var/lib/testbed-web/peers.new
            mv /var/lib/testbed-web/peers.new /var/lib/testbed-web/peers
            sleep 1
          done
        readinessProbe: {httpGet: {path: /boots, port: 8080}, periodSeconds: 1}
        livenessProbe: {exec: {command: [test, -s, /var/lib/testbed-web/boots]}, periodSeconds: 1, failureThreshold: 3}
        volumeMounts: [{name: data, mountPath: /var/lib/testbed-web}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Mi}}}
"#;

fn json_of(bed: &TestBed, args: &[&str]) -> serde_json::Value {
    let out = bed.kubectl(args);
    assert!(out.success, "kubectl {args:?}: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("JSON")
}

/// Each pod's volume directory (the hostPath of its PVC's volume).
fn volume_dir(bed: &TestBed, pod: &str) -> std::path::PathBuf {
    bed.volume_path("default", &format!("data-{pod}")).expect("the pod's volume")
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "{what} not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_runs_with_volumes_and_dns_and_a_deleted_pod_comes_back() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(bed) = TestBed::start(dir.path()).await else { return };
    let applied = bed.kubectl_with_input(&["apply", "-f", "-"], STATEFUL_SET);
    assert!(applied.success, "{}", applied.stderr);
    wait_for("3 ready replicas", Duration::from_secs(120), || {
        let s = json_of(&bed, &["get", "statefulset", "web", "-o", "json"]);
        s["status"]["readyReplicas"].as_u64() == Some(3)
    })
    .await;
    let pvcs = json_of(&bed, &["get", "pvc", "-o", "json"]);
    let bound = pvcs["items"].as_array().expect("items").iter().filter(|p| p["status"]["phase"] == "Bound").count();
    assert_eq!(bound, 3, "PVCs bound");
    // Every pod resolves every pod's DNS name to that pod's address, and
    // the headless service's name to a ready pod's.
    let pods = json_of(&bed, &["get", "pods", "-l", "app=web", "-o", "json"]);
    let mut ips: Vec<(String, String)> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["status"]["podIP"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    ips.sort();
    assert!(ips.iter().all(|(_, ip)| !ip.is_empty()), "{ips:?}");
    for (pod, _) in &ips {
        let peers_file = volume_dir(&bed, pod).join("peers");
        wait_for(&format!("{pod} resolving its peers"), Duration::from_secs(30), || {
            let peers = std::fs::read_to_string(&peers_file).unwrap_or_default();
            let service = peers.lines().find(|l| l.contains("web.default.svc.cluster.local") && !l.contains("web-"));
            ips.iter()
                .all(|(name, ip)| peers.lines().any(|l| l.starts_with(&format!("{ip} ")) && l.contains(name.as_str())))
                && service.is_some_and(|l| ips.iter().any(|(_, ip)| l.starts_with(&format!("{ip} "))))
        })
        .await;
    }
    // A deleted pod is recreated with the same name and the same volume.
    let old_uid = json_of(&bed, &["get", "pod", "web-1", "-o", "json"])["metadata"]["uid"].clone();
    assert!(bed.kubectl(&["delete", "pod", "web-1", "--wait=false"]).success);
    wait_for("web-1 recreated and ready", Duration::from_secs(90), || {
        let p = bed.kubectl(&["get", "pod", "web-1", "-o", "json"]);
        let p: serde_json::Value = serde_json::from_str(&p.stdout).unwrap_or_default();
        p["metadata"]["uid"] != old_uid
            && p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    })
    .await;
    let boots = std::fs::read_to_string(volume_dir(&bed, "web-1").join("boots")).unwrap_or_default();
    assert_eq!(boots.lines().collect::<Vec<_>>(), ["web-1", "web-1"], "web-1's volume across its two lives");
    node_faults_and_disruption_budgets(&bed).await;
    bed.stop();
}

fn pod_ready(bed: &TestBed, pod: &str) -> bool {
    let p = bed.kubectl(&["get", "pod", pod, "-o", "json"]);
    let p: serde_json::Value = serde_json::from_str(&p.stdout).unwrap_or_default();
    p["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The node's failures and the disruption controller, on the running set.
async fn node_faults_and_disruption_budgets(bed: &TestBed) {
    let pod = |name: &str| (String::from("default"), name.to_string());
    // Processes killed under a Pod that stays: restarted, counted, Ready again.
    let (namespace, name) = pod("web-2");
    bed.fault(Fault::KillContainers { namespace, name });
    wait_for("web-2 restarted and ready", Duration::from_secs(60), || {
        let p = json_of(bed, &["get", "pod", "web-2", "-o", "json"]);
        p["status"]["containerStatuses"][0]["restartCount"].as_u64() == Some(1) && pod_ready(bed, "web-2")
    })
    .await;
    // Cut off, its HTTP readiness probe fails; joined again, it is Ready.
    let (namespace, name) = pod("web-0");
    bed.fault(Fault::Network { namespace, name, connected: false });
    wait_for("web-0 not ready while cut off", Duration::from_secs(30), || !pod_ready(bed, "web-0")).await;
    let (namespace, name) = pod("web-0");
    bed.fault(Fault::Network { namespace, name, connected: true });
    wait_for("web-0 ready again", Duration::from_secs(30), || pod_ready(bed, "web-0")).await;
    // A budget that allows no disruption blocks an eviction; one that
    // allows one lets it through.
    let pdb = |min: u32| {
        format!("apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata: {{name: web, namespace: default}}\nspec: {{minAvailable: {min}, selector: {{matchLabels: {{app: web}}}}}}\n")
    };
    assert!(bed.kubectl_with_input(&["apply", "-f", "-"], &pdb(3)).success);
    wait_for("the budget counted", Duration::from_secs(60), || {
        let b = json_of(bed, &["get", "pdb", "web", "-o", "json"]);
        b["status"]["currentHealthy"].as_u64() == Some(3) && b["status"]["disruptionsAllowed"].as_u64() == Some(0)
    })
    .await;
    let refused = bed.evict("default", "web-0");
    assert!(
        !refused.success && refused.stderr.contains("disruption budget"),
        "eviction not blocked: {}{}",
        refused.stdout,
        refused.stderr
    );
    assert!(bed.kubectl(&["delete", "pdb", "web"]).success);
    assert!(bed.kubectl_with_input(&["apply", "-f", "-"], &pdb(2)).success);
    wait_for("the budget allowing one", Duration::from_secs(60), || {
        json_of(bed, &["get", "pdb", "web", "-o", "json"])["status"]["disruptionsAllowed"].as_u64() == Some(1)
    })
    .await;
    let allowed = bed.evict("default", "web-0");
    assert!(allowed.success, "eviction refused: {}", allowed.stderr);
    // A volume's data lost.
    bed.lose_volume("default", "data-web-1").expect("lose web-1's data");
    assert!(!volume_dir(bed, "web-1").join("boots").exists(), "web-1's data is still there");
    // The whole node stops: the control plane marks it not ready; back,
    // it is Ready again and runs its pods again.
    bed.fault(Fault::StopNode);
    let node_ready = || {
        let n = json_of(bed, &["get", "node", node::NODE_NAME, "-o", "json"]);
        n["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    wait_for("the node not ready after it stopped", Duration::from_secs(90), || !node_ready()).await;
    bed.fault(Fault::StartNode);
    wait_for("the node ready after it came back", Duration::from_secs(60), node_ready).await;
    wait_for("the pods ready after the node came back", Duration::from_secs(90), || {
        ["web-0", "web-1", "web-2"].iter().all(|p| pod_ready(bed, p))
    })
    .await;
}

/// A program in a pod reaches the API server with in-cluster configuration
/// unchanged: KUBERNETES_SERVICE_HOST/PORT and the service account token
/// and CA mounted where client libraries look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_uses_in_cluster_configuration() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(bed) = TestBed::start(dir.path()).await else { return };
    let kubectl = tools::require_tool("kubectl").expect("kubectl");
    assert!(
        bed.kubectl(&[
            "create",
            "clusterrolebinding",
            "default-view",
            "--clusterrole=view",
            "--serviceaccount=default:default"
        ])
        .success
    );
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    \
         image: kubectl\n    command: ['{}', get, serviceaccounts, -o, name]\n",
        kubectl.display()
    );
    assert!(bed.kubectl_with_input(&["apply", "-f", "-"], &pod).success);
    wait_for("the client pod to finish", Duration::from_secs(60), || {
        let phase = bed.kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]).stdout;
        phase == "Succeeded" || phase == "Failed"
    })
    .await;
    let log = std::fs::read_dir(dir.path().join("pods"))
        .expect("pods dir")
        .filter_map(Result::ok)
        .filter_map(|d| std::fs::read_to_string(d.path().join("c.log")).ok())
        .collect::<String>();
    let phase = bed.kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]).stdout;
    assert_eq!(phase, "Succeeded", "kubectl in the pod failed:\n{log}");
    assert!(log.contains("serviceaccount/default"), "kubectl in the pod printed:\n{log}");
    init_containers_run_in_order_before_the_others(&bed, dir.path()).await;
    bed.stop();
}

const STAGED: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
data: {greeting: hello}
---
apiVersion: v1
kind: Pod
metadata: {name: staged, namespace: default}
spec:
  restartPolicy: Never
  volumes: [{name: work, emptyDir: {}}, {name: settings, configMap: {name: settings}}]
  initContainers:
  - {name: first, image: busybox, command: [sh, -c, 'echo one > /var/lib/testbed-staged/order'],
     volumeMounts: [{name: work, mountPath: /var/lib/testbed-staged}]}
  - {name: second, image: busybox, command: [sh, -c, 'sleep 1; echo two >> /var/lib/testbed-staged/order'],
     volumeMounts: [{name: work, mountPath: /var/lib/testbed-staged}]}
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'cat /var/lib/testbed-staged/order /etc/testbed-greeting']
    volumeMounts:
    - {name: work, mountPath: /var/lib/testbed-staged}
    - {name: settings, mountPath: /etc/testbed-greeting, subPath: greeting}
"#;

/// Init containers run one after the other, to success, before the main
/// container, which also sees one key of a ConfigMap through `subPath`.
async fn init_containers_run_in_order_before_the_others(bed: &TestBed, dir: &std::path::Path) {
    assert!(bed.kubectl_with_input(&["apply", "-f", "-"], STAGED).success);
    wait_for("the staged pod to finish", Duration::from_secs(60), || {
        let phase = bed.kubectl(&["get", "pod", "staged", "-o", "jsonpath={.status.phase}"]).stdout;
        phase == "Succeeded" || phase == "Failed"
    })
    .await;
    let uid = bed.kubectl(&["get", "pod", "staged", "-o", "jsonpath={.metadata.uid}"]).stdout;
    let out = std::fs::read_to_string(dir.join("pods").join(&uid).join("main.log")).unwrap_or_default();
    assert_eq!(out, "one\ntwo\nhello", "the main container printed");
    let pod = json_of(bed, &["get", "pod", "staged", "-o", "json"]);
    assert_eq!(pod["status"]["phase"], "Succeeded");
    let inits: Vec<_> = pod["status"]["initContainerStatuses"]
        .as_array()
        .expect("init statuses")
        .iter()
        .map(|c| c["state"]["terminated"]["exitCode"].as_i64())
        .collect();
    assert_eq!(inits, [Some(0), Some(0)]);
}
