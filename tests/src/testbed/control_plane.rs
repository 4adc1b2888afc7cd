//! The test bed's control plane, all real: ferrocd as the store (over TLS
//! with client certificates, as production runs etcd), kube-apiserver,
//! kube-controller-manager (every default controller, the hostpath
//! provisioner for PVCs) and kube-scheduler.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::certs::Pki;
use crate::daemon::Daemon;
use crate::kube::{kube_bin, ApiServer, ApiServerOptions};
use crate::member::Member;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

pub struct ControlPlane {
    // Dropped in this order: controllers first, the store last.
    scheduler: Daemon,
    controller_manager: Daemon,
    pub api: ApiServer,
    pub store: Member,
    /// The store's certificates (their files live as long as it does).
    pub pki: Pki,
}

impl ControlPlane {
    /// Starts everything with kube-apiserver on `address` (pods reach it
    /// there); None when the Kubernetes binaries are missing (outside CI).
    pub async fn start(address: &str, dir: &Path) -> Option<ControlPlane> {
        let (cm_bin, sched_bin) = (kube_bin("kube-controller-manager")?, kube_bin("kube-scheduler")?);
        let pki = Pki::new();
        let flags = pki.server_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let store =
            Member::try_ferrocd_at(&pki.seat("store", false), &flags).await.unwrap_or_else(|log| panic!("{log}"));
        let etcd_servers = [store.endpoint()];
        let etcd_tls = [
            format!("--etcd-cafile={}", pki.ca.file.display()),
            format!("--etcd-certfile={}", pki.root.cert.display()),
            format!("--etcd-keyfile={}", pki.root.key.display()),
        ];
        let etcd_tls: Vec<&str> = etcd_tls.iter().map(String::as_str).collect();
        let api = ApiServer::start_with(ApiServerOptions {
            etcd_servers: &etcd_servers,
            address,
            with_controllers: true,
            extra: &etcd_tls,
        })
        .await?;
        let kubeconfig = format!("--kubeconfig={}", api.kubeconfig().display());
        let mut cm = Command::new(cm_bin);
        cm.args([
            &kubeconfig,
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--controllers=*",
            "--enable-hostpath-provisioner",
            "--use-service-account-credentials=false",
        ])
        .arg(format!("--service-account-private-key-file={}", api.service_account_key().display()))
        .arg(format!("--root-ca-file={}", api.serving_cert().display()));
        let controller_manager = Daemon::spawn("kube-controller-manager", cm, &dir.join("controller-manager.log"));
        let mut sched = Command::new(sched_bin);
        sched.args([&kubeconfig, "--leader-elect=false", "--port=0", "--secure-port=0"]);
        let scheduler = Daemon::spawn("kube-scheduler", sched, &dir.join("scheduler.log"));
        let mut plane = ControlPlane { scheduler, controller_manager, api, store, pki };
        plane.wait_ready().await;
        Some(plane)
    }

    /// Ready once the token controller has given `default` its token.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for d in [&mut self.controller_manager, &mut self.scheduler] {
                if let Err(e) = d.check_running() {
                    panic!("{e}");
                }
            }
            let out = self.api.kubectl(&["get", "serviceaccount", "default", "-o", "jsonpath={.secrets[0].name}"]);
            if out.success && !out.stdout.trim().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the controllers were not ready after {READY_TIMEOUT:?}:\n{}",
                self.controller_manager.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the controllers, kube-apiserver and the store, in that order.
    pub fn stop(self) {
        let ControlPlane { mut scheduler, mut controller_manager, api, store, pki } = self;
        scheduler.stop(Duration::from_secs(5));
        controller_manager.stop(Duration::from_secs(5));
        drop(api);
        drop(store);
        drop(pki);
    }
}
