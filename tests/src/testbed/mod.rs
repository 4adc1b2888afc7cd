//! A local Kubernetes for the operator's tests: a real control plane whose
//! store is ferrocd (`control_plane`), a pod network of network namespaces
//! on a bridge (`network`) and a node agent in the kubelet's place (`node`).
//! `scripts/kube-testbed.sh` runs the same code for a person, through the
//! `ferrocd-testbed` program.

pub mod control_plane;
pub mod network;
pub mod node;
pub mod pod;
pub mod runtime;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::ControlPlane;
use network::PodNetwork;
pub use runtime::Fault;
use runtime::Runtime;

use crate::command::Output;
use crate::tools;

const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The default StorageClass: claims get directories from the controller
/// manager's hostpath provisioner.
const STORAGE_CLASS: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: local, annotations: {storageclass.kubernetes.io/is-default-class: "true"}}
provisioner: kubernetes.io/host-path
"#;

pub struct TestBed {
    stop_node: Arc<AtomicBool>,
    /// The node died (`Fault::StopNode`): no more heartbeats.
    node_dead: Arc<AtomicBool>,
    faults: std::sync::Mutex<std::sync::mpsc::Sender<Fault>>,
    heartbeats: Option<std::thread::JoinHandle<()>>,
    pods: Option<std::thread::JoinHandle<()>>,
    plane: Option<ControlPlane>,
    dir: PathBuf,
    /// Kept until the control plane, which listens on the bridge, has stopped.
    _network: Arc<PodNetwork>,
}

impl TestBed {
    /// Brings the test bed up, its logs in `dir`, and returns once the node
    /// is Ready; None when a part is missing (outside CI: root for the pod
    /// network, the Kubernetes binaries).
    pub async fn start(dir: &Path) -> Option<TestBed> {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let network = match PodNetwork::create() {
            Ok(n) => Arc::new(n),
            Err(e) => {
                tools::missing(&format!("the test bed's pod network (needs root and iproute2): {e}"));
                return None;
            }
        };
        let node_ip = network.node_ip();
        let plane = ControlPlane::start(&node_ip, dir).await?;
        let kubectl = plane.api.kubectl_for();
        node::register(&kubectl, &node_ip).unwrap_or_else(|e| panic!("{e}"));
        let class = kubectl.run_with_input(&["apply", "-f", "-"], STORAGE_CLASS);
        assert!(class.success, "creating the default StorageClass: {}", class.stderr);
        let stop_node = Arc::new(AtomicBool::new(false));
        let (faults, fault_rx) = std::sync::mpsc::channel();
        let pods = {
            let runtime =
                Runtime::new(kubectl.clone(), network.clone(), dir.to_path_buf(), plane.api.address(), fault_rx);
            let stop = stop_node.clone();
            std::thread::spawn(move || runtime.run(stop))
        };
        let node_dead = Arc::new(AtomicBool::new(false));
        let heartbeats = {
            let (stop, dead) = (stop_node.clone(), node_dead.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now() + node::HEARTBEAT;
                while !stop.load(Ordering::Acquire) {
                    if Instant::now() >= next && !dead.load(Ordering::Acquire) {
                        if let Err(e) = node::heartbeat(&kubectl, &node_ip) {
                            eprintln!("test bed node heartbeat: {e}");
                        }
                        next = Instant::now() + node::HEARTBEAT;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let bed = TestBed {
            stop_node,
            node_dead,
            faults: std::sync::Mutex::new(faults),
            heartbeats: Some(heartbeats),
            pods: Some(pods),
            plane: Some(plane),
            dir: dir.to_path_buf(),
            _network: network,
        };
        bed.wait_node_ready().await;
        Some(bed)
    }

    /// Ready, and the node lifecycle controller has lifted its not-ready taint.
    async fn wait_node_ready(&self) {
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            let out = self.kubectl(&["get", "node", node::NODE_NAME, "-o", "json"]);
            if out.success {
                let n: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
                let ready = n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                let tainted = n["spec"]["taints"].as_array().is_some_and(|t| !t.is_empty());
                if ready && !tainted {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the node was not Ready after {NODE_READY_TIMEOUT:?}: {}", out.stdout);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn plane(&self) -> &ControlPlane {
        self.plane.as_ref().expect("the control plane runs until stop")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.plane().api.kubeconfig()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.plane().api.kubectl(args)
    }

    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> Output {
        self.plane().api.kubectl_with_input(args, input)
    }

    /// A kubectl of this test bed, for other threads.
    pub fn kubectl_handle(&self) -> crate::kube::Kubectl {
        self.plane().api.kubectl_for()
    }

    /// `kubectl … -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        self.plane().api.kubectl_for().json(args)
    }

    /// Where a container of the pod with `uid` writes its output.
    pub fn container_log(&self, uid: &str, container: &str) -> PathBuf {
        self.dir.join("pods").join(uid).join(format!("{container}.log"))
    }

    /// Asks the API server to evict a pod, as a drain does (disruption
    /// budgets apply).
    pub fn evict(&self, namespace: &str, pod: &str) -> Output {
        let body = format!(
            r#"{{"apiVersion":"policy/v1beta1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"{namespace}"}}}}"#
        );
        let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/eviction");
        self.kubectl_with_input(&["create", "--raw", &path, "-f", "-"], &body)
    }

    /// Makes the node fail as a real one can (see `Fault`).
    pub fn fault(&self, fault: Fault) {
        match fault {
            Fault::StopNode => self.node_dead.store(true, Ordering::Release),
            Fault::StartNode => self.node_dead.store(false, Ordering::Release),
            _ => {}
        }
        let _ = self.faults.lock().expect("faults lock").send(fault);
    }

    /// Loses the data of a PVC's volume (its files are deleted).
    pub fn lose_volume(&self, namespace: &str, claim: &str) -> Result<(), String> {
        let path = self.volume_path(namespace, claim)?;
        for entry in std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))? {
            let p = entry.map_err(|e| e.to_string())?.path();
            let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            gone.map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(())
    }

    /// The directory of a PVC's volume on this machine.
    pub fn volume_path(&self, namespace: &str, claim: &str) -> Result<PathBuf, String> {
        self.plane().api.kubectl_for().claim_path(namespace, claim)
    }

    /// Stops the node and then the control plane.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop_node.store(true, Ordering::Release);
        for h in [self.heartbeats.take(), self.pods.take()].into_iter().flatten() {
            let _ = h.join();
        }
        if let Some(plane) = self.plane.take() {
            plane.stop();
        }
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        self.shut_down();
    }
}
