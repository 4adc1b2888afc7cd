//! The operator on the test bed: the CRD applied, `ferrocd-operator` running
//! as a real process against the test bed's API server, EtcdCluster status
//! read back, and a client that writes through the client Service's
//! endpoints all along, retrying on another member when one fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::Daemon;
use crate::kube::Kubectl;
use crate::testbed::TestBed;
use crate::{ports, tools};

/// The CRD as generated from the operator's types (`crds/`).
pub fn crd_path() -> std::path::PathBuf {
    tools::workspace_root().join("crds/ferrocd.io_etcdclusters.yaml")
}

pub struct OperatorBed {
    pub bed: TestBed,
    operator: Option<Daemon>,
    /// Where the operator process serves /metrics and /healthz.
    metrics: String,
    dir: std::path::PathBuf,
    starts: u32,
}

impl OperatorBed {
    /// The test bed with the CRD and a running operator; None where the
    /// test bed cannot run (outside CI).
    pub async fn start(dir: &Path) -> Option<OperatorBed> {
        let mut ob = OperatorBed::bare(dir).await?;
        // Kubernetes 1.20 predates CRD validation rules (CEL): kubectl's
        // client-side schema check refuses the field, the server drops it.
        let crd = crd_path();
        let applied = ob.bed.kubectl(&["apply", "--validate=false", "-f", &crd.to_string_lossy()]);
        assert!(applied.success, "applying the CRD: {}", applied.stderr);
        ob.wait_crd();
        ob.start_operator();
        Some(ob)
    }

    /// The test bed alone: the CRD and the operator come from elsewhere
    /// (the Helm chart).
    pub async fn bare(dir: &Path) -> Option<OperatorBed> {
        let bed = TestBed::start(dir).await?;
        Some(OperatorBed { bed, operator: None, metrics: String::new(), dir: dir.to_path_buf(), starts: 0 })
    }

    pub fn wait_crd(&self) {
        let established =
            self.bed.kubectl_handle().wait_crd_established("etcdclusters.ferrocd.io", Duration::from_secs(30));
        if let Err(e) = established {
            panic!("the CRD was not established: {e}");
        }
    }

    /// helm against the test bed, its state in the test's directory; None
    /// (the test skips) where helm is missing outside CI.
    pub fn helm(&self, args: &[&str]) -> Option<crate::command::Output> {
        let helm = tools::require_tool("helm")?;
        let home = self.dir.join("helm");
        let mut cmd = Command::new(helm);
        cmd.arg("--kubeconfig").arg(self.bed.kubeconfig()).args(args);
        for var in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
            cmd.env(var, &home);
        }
        Some(crate::command::run(cmd, None))
    }

    pub fn start_operator(&mut self) {
        self.starts += 1;
        self.metrics = format!("127.0.0.1:{}", ports::free_port());
        let mut cmd = Command::new(tools::sibling_bin("ferrocd-operator"));
        cmd.env("KUBECONFIG", self.bed.kubeconfig())
            .env("RUST_LOG", "info,kube=warn")
            .args(["--metrics-address", &self.metrics])
            // Tests wait seconds, not minutes, before an opted-in recovery.
            .args(["--quorum-loss-grace", "10s"]);
        let log = self.dir.join(format!("operator-{}.log", self.starts));
        self.operator = Some(Daemon::spawn("ferrocd-operator", cmd, &log));
    }

    /// SIGKILL: the operator dies between two steps.
    pub fn kill_operator(&mut self) {
        self.operator.take();
    }

    /// The operator process's `/metrics` (or `/healthz`).
    pub async fn operator_http(&self, path: &str) -> (u16, String) {
        crate::http::try_http_get(&self.metrics, path).await.unwrap_or_else(|e| panic!("{} {path}: {e}", self.metrics))
    }

    pub fn operator_log(&self) -> String {
        self.operator.as_ref().map(Daemon::log_tail).unwrap_or_default()
    }

    pub fn apply(&self, yaml: &str) {
        let out = self.bed.kubectl_with_input(&["apply", "-f", "-"], yaml);
        assert!(out.success, "kubectl apply: {}\n{yaml}", out.stderr);
    }

    pub fn cluster(&self, name: &str) -> Value {
        self.bed.json(&["get", "etcdcluster", name]).unwrap_or_default()
    }

    /// Polls the EtcdCluster until `done` holds of it; panics with its
    /// status and the operator's log after `limit`.
    pub async fn wait_for(&self, name: &str, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.cluster(name);
            if done(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: not {what} after {limit:?}; status:\n{}\noperator log:\n{}",
                serde_json::to_string_pretty(&c["status"]).unwrap_or_default(),
                self.operator_log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Until the cluster has `n` healthy voters and nothing in progress.
    pub async fn wait_converged(&self, name: &str, n: i64, limit: Duration) -> Value {
        self.wait_for(name, &format!("converged at {n} members"), limit, |c| converged(c, n)).await
    }

    /// The pods' names and IPs, by label selector.
    pub fn pod_ips(&self, namespace: &str, selector: &str) -> BTreeMap<String, String> {
        let pods = self.bed.json(&["get", "pods", "-n", namespace, "-l", selector]).unwrap_or_default();
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((p["metadata"]["name"].as_str()?.to_string(), p["status"]["podIP"].as_str()?.to_string()))
            })
            .collect()
    }

    /// A kubectl for other threads (the writer's).
    pub fn kubectl(&self) -> Kubectl {
        self.bed.kubectl_handle()
    }
}

/// How a client reaches the members of cluster `cluster` over TLS: with the
/// CA and the client certificate of Secret `secret` (the operator's own,
/// for instance), checking members by the client Service's name.
pub fn tls_options(kubectl: &Kubectl, namespace: &str, cluster: &str, secret: &str) -> etcd_client::ConnectOptions {
    use base64::Engine;
    let s =
        kubectl.json(&["get", "secret", "-n", namespace, secret]).unwrap_or_else(|e| panic!("Secret {secret}: {e}"));
    let field = |k: &str| {
        let b64 = s["data"][k].as_str().unwrap_or_else(|| panic!("Secret {secret} has no {k}"));
        base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")
    };
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(field("ca.crt")))
        .identity(etcd_client::Identity::from_pem(field("tls.crt"), field("tls.key")))
        .domain_name(format!("{cluster}-client.{namespace}.svc"));
    etcd_client::ConnectOptions::new().with_tls(tls)
}

/// Client URLs of a Service's ready addresses, as its Endpoints list them.
pub fn service_endpoints(kubectl: &Kubectl, namespace: &str, service: &str) -> Vec<String> {
    let ep = kubectl.json(&["get", "endpoints", "-n", namespace, service]).unwrap_or_default();
    let ips =
        ep["subsets"].as_array().into_iter().flatten().flat_map(|s| s["addresses"].as_array().into_iter().flatten());
    ips.filter_map(|a| a["ip"].as_str().map(|ip| format!("http://{ip}:2379"))).collect()
}

/// Whether an EtcdCluster's status shows `n` healthy voters, no learner,
/// Available and not Progressing.
pub fn converged(c: &Value, n: i64) -> bool {
    let s = &c["status"];
    let cond = |t: &str| {
        s["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == t)
            .and_then(|c| c["status"].as_str())
            .map(str::to_string)
    };
    let members = s["members"].as_array().cloned().unwrap_or_default();
    s["readyMembers"].as_i64() == Some(n)
        && members.len() as i64 == n
        && members.iter().all(|m| m["learner"] == false && m["healthy"] == true)
        && cond("Available").as_deref() == Some("True")
        && cond("Progressing").as_deref() == Some("False")
        && s["observedGeneration"] == c["metadata"]["generation"]
}

/// The member IDs by name, from an EtcdCluster's status.
pub fn member_ids(c: &Value) -> BTreeMap<String, String> {
    c["status"]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["name"].as_str()?.to_string(), m["id"].as_str()?.to_string())))
        .collect()
}

/// What the writer saw.
#[derive(Default)]
pub struct Writes {
    /// Keys whose put was acknowledged.
    pub acked: Vec<String>,
    /// Attempts that failed and were retried on another member, by scenario.
    pub retried: BTreeMap<String, u64>,
    /// Puts that failed every attempt (the client gave up), by scenario.
    pub failed: BTreeMap<String, u64>,
    pub scenario: String,
    pub last_error: String,
}

/// Attempts at one put before the writer gives up on it, each after asking
/// again which members are ready; about as patient as a client's retry
/// policy over an election.
pub const ATTEMPTS: u32 = 5;

/// A client putting unique keys without pause, through the ready members
/// (the client Service's endpoints); a failed put is retried on the members
/// ready then, up to `ATTEMPTS` times.
pub struct Writer {
    writes: Arc<Mutex<Writes>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// `endpoints` gives the members to write through, asked again after a
    /// failure.
    pub fn start(endpoints: impl Fn() -> Vec<String> + Send + 'static) -> Writer {
        let writes = Arc::new(Mutex::new(Writes { scenario: "start".into(), ..Default::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (writes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("writer runtime");
            rt.block_on(async move {
                let mut client: Option<etcd_client::Client> = None;
                let mut n = 0u64;
                while !s.load(Ordering::Acquire) {
                    let key = format!("w/{n:08}");
                    n += 1;
                    for attempt in 1..=ATTEMPTS {
                        if client.is_none() {
                            let opts = etcd_client::ConnectOptions::new()
                                .with_connect_timeout(Duration::from_secs(2))
                                .with_timeout(Duration::from_secs(5));
                            client = etcd_client::Client::connect(endpoints(), Some(opts)).await.ok();
                        }
                        let outcome = match client.as_mut() {
                            Some(c) => c.put(key.clone(), "v", None).await.map_err(|e| e.to_string()),
                            None => Err("no ready member to connect to".to_string()),
                        };
                        let acked = {
                            let mut g = w.lock().expect("writes");
                            match outcome {
                                Ok(_) => {
                                    g.acked.push(key.clone());
                                    true
                                }
                                Err(e) => {
                                    let scenario = g.scenario.clone();
                                    let counter = if attempt == ATTEMPTS { &mut g.failed } else { &mut g.retried };
                                    *counter.entry(scenario).or_default() += 1;
                                    g.last_error = e;
                                    false
                                }
                            }
                        };
                        if acked {
                            break;
                        }
                        client = None;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
        });
        Writer { writes, stop, thread: Some(thread) }
    }

    /// Failures from now on count under `name`.
    pub fn scenario(&self, name: &str) {
        self.writes.lock().expect("writes").scenario = name.to_string();
    }

    /// Stops writing; returns what was written.
    pub fn finish(mut self) -> Writes {
        self.halt();
        std::mem::take(&mut *self.writes.lock().expect("writes"))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.halt();
    }
}
