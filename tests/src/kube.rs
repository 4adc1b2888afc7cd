//! A real kube-apiserver (1.20.2, built from Debian's source package by
//! `scripts/install-kube.sh`) storing its state in an etcd-compatible
//! server, and kubectl 1.36 driving it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::command::{self, Output};
use crate::daemon::Daemon;
use crate::{ports, tools};

pub const KUBE_VERSION: &str = "1.20.2";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const TOKEN: &str = "ferrocd-test-token";

/// A control-plane binary the install script built; None (the test skips)
/// when it is missing, outside CI.
pub fn kube_bin(name: &str) -> Option<PathBuf> {
    let path = tools::workspace_root().join(format!(".tools/kubernetes-{KUBE_VERSION}/bin/{name}"));
    if path.is_file() {
        return Some(path);
    }
    tools::missing(&format!("{name} {KUBE_VERSION} not built at {}; run scripts/install-kube.sh", path.display()));
    None
}

pub struct ApiServer {
    // Dropped before the directory its log is in.
    daemon: Daemon,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
    address: String,
    port: u16,
}

/// Where kube-apiserver serves, and whether other control-plane parts join it.
pub struct ApiServerOptions<'a> {
    pub etcd_servers: &'a [String],
    /// The address it binds and advertises (pods must reach it).
    pub address: &'a str,
    /// With a controller-manager: service account tokens and the endpoints
    /// of the `kubernetes` service are made; alone, they are turned off.
    pub with_controllers: bool,
    pub extra: &'a [&'a str],
}

impl ApiServer {
    /// Starts kube-apiserver alone on `etcd_servers` (client URLs) with
    /// `extra` flags and waits until it is ready; None when it is not
    /// installed (outside CI).
    pub async fn start(etcd_servers: &[String], extra: &[&str]) -> Option<ApiServer> {
        ApiServer::start_with(ApiServerOptions { etcd_servers, address: "127.0.0.1", with_controllers: false, extra })
            .await
    }

    pub async fn start_with(o: ApiServerOptions<'_>) -> Option<ApiServer> {
        let (etcd_servers, address, extra) = (o.etcd_servers, o.address, o.extra);
        let bin = kube_bin("kube-apiserver")?;
        let kubectl = tools::require_tool("kubectl")?;
        let dir = tempfile::tempdir().expect("apiserver dir");
        let port = ports::free_port();
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        std::fs::write(dir.path().join("tokens.csv"), format!("{TOKEN},admin,admin,\"system:masters\"\n"))
            .expect("token file");
        let key = Command::new("openssl")
            .args(["genrsa", "-out", &path("sa.key"), "2048"])
            .stderr(Stdio::null())
            .status()
            .expect("run openssl (Debian package openssl)");
        assert!(key.success(), "openssl genrsa failed");
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{address}:{port}\n    \
                 insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  \
                 context:\n    cluster: test\n    user: admin\ncurrent-context: test\n"
            ),
        )
        .expect("kubeconfig");
        let mut args = vec![
            format!("--secure-port={port}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            format!("--cert-dir={}", path("certs")),
            format!("--token-auth-file={}", path("tokens.csv")),
            format!("--service-account-key-file={}", path("sa.key")),
            format!("--service-account-signing-key-file={}", path("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            format!("--etcd-servers={}", etcd_servers.join(",")),
        ];
        if !o.with_controllers {
            // Nothing would make service account tokens or endpoints.
            args.push("--disable-admission-plugins=ServiceAccount".into());
            args.push("--endpoint-reconciler-type=none".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut command = Command::new(&bin);
        command.args(&args);
        let daemon = Daemon::spawn("kube-apiserver", command, &dir.path().join("apiserver.log"));
        let mut api = ApiServer { daemon, dir, kubectl, address: address.to_string(), port };
        api.wait_ready().await;
        Some(api)
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Err(e) = self.daemon.check_running() {
                panic!("{e}");
            }
            if self.kubectl(&["get", "--raw", "/readyz"]).success {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after {READY_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The address and port pods and clients reach it at.
    pub fn address(&self) -> (String, u16) {
        (self.address.clone(), self.port)
    }

    /// Its self-signed serving certificate (what service account tokens'
    /// `ca.crt` holds).
    pub fn serving_cert(&self) -> PathBuf {
        self.dir.path().join("certs/apiserver.crt")
    }

    /// The key service account tokens are signed with.
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.path().join("sa.key")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// kubectl for this API server, to hand to other threads.
    pub fn kubectl_for(&self) -> Kubectl {
        Kubectl::new(self.kubectl.clone(), self.kubeconfig(), self.dir.path().to_path_buf())
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        self.kubectl_for().command(args)
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_for().run(args)
    }

    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> Output {
        self.kubectl_for().run_with_input(args, input)
    }

    /// `kubectl get ARGS --watch --output-watch-events -o json`, its events
    /// as they come.
    pub fn watch(&self, args: &[&str]) -> Watch {
        let mut child = self
            .kubectl_command(args)
            .args(["--watch", "--output-watch-events", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl --watch");
        let stdout = child.stdout.take().expect("watch stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let events = serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<serde_json::Value>();
            for e in events.map_while(Result::ok) {
                if tx.send(e).is_err() {
                    break;
                }
            }
        });
        Watch { child, events: rx }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("apiserver.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }

    /// Lines of the log that report a failure talking to storage, leaving
    /// out those the test caused on purpose (`expected`).
    pub fn storage_errors(&self, expected: &[&str]) -> Vec<String> {
        // etcd's errors, gRPC's (a lost connection), and what kube-apiserver
        // says of an error storage returned.
        const MARKS: [&str; 6] =
            ["etcdserver:", "rpc error", "grpc:", "transport is closing", "metav1.Status", "etcd3"];
        let log = self.log();
        let reader = BufReader::new(log.as_bytes());
        reader
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with('E') || l.starts_with('W'))
            .filter(|l| MARKS.iter().any(|m| l.contains(m)))
            .filter(|l| !expected.iter().any(|e| l.contains(e)))
            .collect()
    }
}

/// kubectl with an API server's kubeconfig.
#[derive(Clone)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    /// kubectl `bin` with `kubeconfig`; `home` takes its discovery cache.
    pub fn new(bin: PathBuf, kubeconfig: PathBuf, home: PathBuf) -> Kubectl {
        Kubectl { bin, kubeconfig, home }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display())).args(args);
        // kubectl writes its discovery cache under $HOME.
        c.env("HOME", &self.home);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        command::run(self.command(args), None)
    }

    pub fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        command::run(self.command(args), Some(input))
    }

    /// Waits until the CRD `name` is established. Polled, not `kubectl
    /// wait --for condition=established`, which fails at once ("accessor
    /// error: <nil>") while a new CRD has no conditions yet instead of waiting.
    pub fn wait_crd_established(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let crd = self.json(&["get", "crd", name]);
            let conditions = crd.as_ref().ok().and_then(|c| c["status"]["conditions"].as_array());
            if conditions.is_some_and(|cs| cs.iter().any(|c| c["type"] == "Established" && c["status"] == "True")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{name} is not established after {timeout:?}: {crd:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What `kubectl ARGS -o json` prints, parsed; Err with its complaint.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = self.run(&[args, &["-o", "json"]].concat());
        if !out.success {
            return Err(format!("kubectl {}: {}", args.join(" "), out.stderr.trim()));
        }
        serde_json::from_str(&out.stdout).map_err(|e| format!("kubectl {}: {e}", args.join(" ")))
    }

    /// The directory of a PVC's volume (the hostPath of the PV it is bound to).
    pub fn claim_path(&self, namespace: &str, claim: &str) -> Result<PathBuf, String> {
        let pvc = self.json(&["get", "pvc", claim, "-n", namespace])?;
        let pv =
            pvc["spec"]["volumeName"].as_str().filter(|s| !s.is_empty()).ok_or(format!("{claim} is not bound yet"))?;
        let pv = self.json(&["get", "pv", pv])?;
        pv["spec"]["hostPath"]["path"].as_str().map(PathBuf::from).ok_or(format!("{claim}: not a hostPath volume"))
    }
}

/// A `kind: List` of `n` objects of `kind` named `prefix-NNNN` in
/// `namespace`, each with the fields `body(i)` gives (YAML, indented by 2).
pub fn object_list(kind: &str, namespace: &str, prefix: &str, n: usize, body: impl Fn(usize) -> String) -> String {
    let mut out = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..n {
        out.push_str(&format!(
            "- apiVersion: v1\n  kind: {kind}\n  metadata:\n    name: {prefix}-{i:04}\n    namespace: {namespace}\n{}",
            body(i)
        ));
    }
    out
}

/// A running `kubectl --watch` and the events it printed.
pub struct Watch {
    child: Child,
    events: mpsc::Receiver<serde_json::Value>,
}

impl Watch {
    /// Events until `done` says the last one ends it, or `timeout` passes.
    pub fn until(&self, timeout: Duration, mut done: impl FnMut(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    let last = done(&e);
                    seen.push(e);
                    if last {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        seen
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
