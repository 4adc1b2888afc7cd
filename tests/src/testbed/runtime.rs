//! The node agent's pod loop, in the kubelet's place: every tick it lists
//! the pods bound to the node, starts new ones, restarts exited containers
//! per `restartPolicy`, runs readiness and liveness probes, stops deleted
//! pods (preStop, SIGTERM, the grace period, SIGKILL) and reports each
//! pod's status as a kubelet does.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::network::PodNetwork;
use super::node::{rfc3339, NODE_NAME};
use super::pod::{Container, Pod};
use crate::kube::Kubectl;

const TICK: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct Runtime {
    pub kubectl: Kubectl,
    pub network: Arc<PodNetwork>,
    pub dir: PathBuf,
    pub api_host: String,
    pub api_port: u16,
    pods: HashMap<String, Pod>,
    /// The status last reported per pod.
    reported: HashMap<String, Value>,
    /// Host paths made for pods (volumes, mount points): removed when the
    /// node stops, as the test bed's cluster goes with it.
    created: Vec<PathBuf>,
    faults: Receiver<Fault>,
    /// Set by `Fault::StopNode`: nothing runs or reports any more.
    dead: bool,
}

/// Signals a container's whole process group (it leads one).
fn signal(child: &Child, sig: &str) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-s", sig, "--", &group]).stderr(std::process::Stdio::null()).status();
}

/// SIGKILL to the container's process group, and its exit collected.
fn kill_container(child: &mut Child) {
    signal(child, "KILL");
    let _ = child.wait();
}

/// What a test can do to the node, as a real node can fail.
pub enum Fault {
    /// Every process of the pod dies; the Pod stays (its restart policy applies).
    KillContainers { namespace: String, name: String },
    /// The pod's link goes down (or up again).
    Network { namespace: String, name: String, connected: bool },
    /// The node dies: its pods' processes with it, and it reports nothing
    /// more (its heartbeats stop too); its volumes' data stays while the
    /// test bed runs.
    StopNode,
    /// The node comes back, as after a reboot: heartbeats resume and the
    /// pods still bound to it start afresh.
    StartNode,
}

impl Runtime {
    pub fn new(
        kubectl: Kubectl,
        network: Arc<PodNetwork>,
        dir: PathBuf,
        api: (String, u16),
        faults: Receiver<Fault>,
    ) -> Runtime {
        let (api_host, api_port) = api;
        Runtime {
            kubectl,
            network,
            dir,
            api_host,
            api_port,
            pods: HashMap::new(),
            reported: HashMap::new(),
            created: Vec::new(),
            faults,
            dead: false,
        }
    }

    /// Runs until `stop`, then stops every pod's processes.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Acquire) {
            while let Ok(fault) = self.faults.try_recv() {
                self.inject(fault);
            }
            if !self.dead {
                if let Err(e) = self.tick() {
                    eprintln!("test bed node: {e}");
                }
            }
            std::thread::sleep(TICK);
        }
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for k in keys {
            self.kill_pod(&k, Duration::from_secs(2));
        }
        // Newest first: a mount point may sit inside a directory made earlier.
        for path in self.created.iter().rev() {
            let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        }
    }

    fn find(&self, namespace: &str, name: &str) -> Option<String> {
        self.pods.iter().find(|(_, p)| p.namespace == namespace && p.name == name).map(|(k, _)| k.clone())
    }

    fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::KillContainers { namespace, name } => {
                let key = self.find(&namespace, &name);
                for c in key.and_then(|k| self.pods.get_mut(&k)).into_iter().flat_map(|p| &mut p.containers) {
                    if let Some(child) = c.child.as_ref() {
                        signal(child, "KILL");
                    }
                }
            }
            Fault::Network { namespace, name, connected } => {
                if let Some(k) = self.find(&namespace, &name) {
                    if let Err(e) = self.network.set_connected(&k, connected) {
                        eprintln!("test bed node: {e}");
                    }
                }
            }
            Fault::StopNode => {
                self.dead = true;
                // Everything in memory goes with the node, as in a reboot.
                let keys: Vec<String> = self.pods.keys().cloned().collect();
                for k in keys {
                    self.kill_pod(&k, Duration::ZERO);
                }
            }
            Fault::StartNode => self.dead = false,
        }
    }

    fn tick(&mut self) -> Result<(), String> {
        let on_node = format!("spec.nodeName={NODE_NAME}");
        let list = self.kubectl.json(&["get", "pods", "-A", "--field-selector", &on_node])?;
        let listed: BTreeMap<String, Value> =
            list["items"].as_array().into_iter().flatten().map(|p| (Pod::key(p), p.clone())).collect();
        let mut changed = false;
        for (key, p) in &listed {
            let deleting = !p["metadata"]["deletionTimestamp"].is_null();
            if deleting {
                if self.pods.contains_key(key) {
                    let grace = p["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(30);
                    self.run_pre_stop(key);
                    self.kill_pod(key, Duration::from_secs(grace));
                    changed = true;
                }
                self.finish_deletion(p);
            } else if !self.pods.contains_key(key) {
                self.admit(key, p)?;
                changed = true;
            }
        }
        let gone: Vec<String> = self.pods.keys().filter(|k| !listed.contains_key(*k)).cloned().collect();
        for k in gone {
            self.kill_pod(&k, Duration::ZERO);
            changed = true;
        }
        // Before any container starts: its /etc/hosts is bind-mounted.
        if changed {
            self.write_hosts();
        }
        let ready_before = self.readiness();
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for k in keys {
            self.supervise(&k);
            self.report(&k);
        }
        if self.readiness() != ready_before {
            self.write_hosts();
        }
        Ok(())
    }

    /// A new pod: its network, directory and containers.
    fn admit(&mut self, key: &str, p: &Value) -> Result<(), String> {
        let (netns, ip) = self.network.add(key)?;
        let dir = self.dir.join("pods").join(key);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let list = |field: &str, init: bool| {
            p["spec"][field].as_array().into_iter().flatten().map(move |c| Container::new(c, init))
        };
        let containers = list("initContainers", true).chain(list("containers", false)).collect();
        let pod = Pod {
            uid: key.to_string(),
            namespace: p["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
            name: p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            spec: p["spec"].clone(),
            netns,
            ip,
            dir,
            containers,
            started: rfc3339(SystemTime::now()),
        };
        let search = format!("{0}.svc.cluster.local svc.cluster.local cluster.local", pod.namespace);
        std::fs::write(pod.dir.join("resolv.conf"), format!("search {search}\noptions ndots:5\n"))
            .map_err(|e| e.to_string())?;
        self.pods.insert(key.to_string(), pod);
        Ok(())
    }

    /// What cluster DNS would answer, in each pod's /etc/hosts (rewritten
    /// in place: the bind mounts keep the inode): every pod's name
    /// (`host.subdomain.ns.svc.cluster.local` and its shorter forms, the
    /// shortest only within its namespace) and every headless service's
    /// name (the subdomain of its pods) with its ready pods' addresses.
    fn write_hosts(&self) {
        for viewer in self.pods.values() {
            let mut hosts = format!("127.0.0.1 localhost\n{} {}\n", viewer.ip, viewer.hostname());
            let names_in = |ns: &str, rel: &str| {
                let mut n =
                    vec![format!("{rel}.{ns}.svc.cluster.local"), format!("{rel}.{ns}.svc"), format!("{rel}.{ns}")];
                if ns == viewer.namespace {
                    n.push(rel.to_string());
                }
                n.join(" ")
            };
            for pod in self.pods.values() {
                let Some(sub) = pod.spec["subdomain"].as_str() else { continue };
                let host = pod.hostname();
                hosts.push_str(&format!("{} {}\n", pod.ip, names_in(&pod.namespace, &format!("{host}.{sub}"))));
                if pod.ready() {
                    hosts.push_str(&format!("{} {}\n", pod.ip, names_in(&pod.namespace, sub)));
                }
            }
            let _ = std::fs::write(viewer.dir.join("hosts"), &hosts);
        }
    }

    /// Which pods are ready: a change rewrites the hosts files.
    fn readiness(&self) -> Vec<(String, bool)> {
        let mut r: Vec<(String, bool)> = self.pods.iter().map(|(k, p)| (k.clone(), p.ready())).collect();
        r.sort();
        r
    }

    /// Starts containers due to (re)start, notes exits, runs probes.
    fn supervise(&mut self, key: &str) {
        let Some(pod) = self.pods.get_mut(key) else { return };
        let policy = pod.spec["restartPolicy"].as_str().unwrap_or("Always").to_string();
        for i in 0..pod.containers.len() {
            let exited = pod.containers[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let c = &mut pod.containers[i];
                c.child = None;
                c.ready = false;
                let code = status.code().unwrap_or(137);
                c.last_exit = Some((code, rfc3339(SystemTime::now())));
                if restarts_after(c.init, &policy, code) {
                    c.restarts += 1;
                    c.next_start =
                        Instant::now() + (Duration::from_secs(1) * 2u32.pow(c.restarts.min(4))).min(MAX_BACKOFF);
                }
            }
            // Init containers one at a time, in order; the others after them.
            let c = &pod.containers[i];
            if pod.containers[..i].iter().any(|before| before.init && !before.succeeded()) || (c.init && c.succeeded())
            {
                continue;
            }
            let never_started = c.last_exit.is_none() && c.started_at.is_empty();
            let restart_due = c.last_exit.is_some() && c.restarts > 0 && Instant::now() >= c.next_start;
            if c.child.is_none() && (never_started || restart_due) {
                if let Err(e) = pod.start(i, &self.kubectl, (&self.api_host, self.api_port), &mut self.created) {
                    eprintln!("test bed node: pod {}/{}: {e}", pod.namespace, pod.name);
                }
                continue;
            }
            if pod.containers[i].child.is_none() || !pod.containers[i].probes_due(Instant::now()) {
                continue;
            }
            if let Some(probe) = pod.containers[i].liveness().cloned() {
                let threshold = probe["failureThreshold"].as_u64().unwrap_or(3) as u32;
                let passed = pod.handler_passes(i, &probe);
                let c = &mut pod.containers[i];
                c.live_failures = if passed { 0 } else { c.live_failures + 1 };
                if c.live_failures >= threshold {
                    // Killed; the exit is noted and the restart policy applies next tick.
                    if let Some(child) = c.child.as_mut() {
                        signal(child, "KILL");
                    }
                    continue;
                }
            }
            if let Some(probe) = pod.containers[i].readiness().cloned() {
                pod.containers[i].ready = pod.handler_passes(i, &probe);
            }
        }
    }

    fn run_pre_stop(&self, key: &str) {
        let Some(pod) = self.pods.get(key) else { return };
        for (i, c) in pod.containers.iter().enumerate() {
            let hook = &c.spec["lifecycle"]["preStop"];
            if !hook.is_null() && c.child.is_some() {
                pod.handler_passes(i, hook);
            }
        }
    }

    /// SIGTERM to every container, SIGKILL after `grace`; the pod's network
    /// and non-persistent volumes go.
    fn kill_pod(&mut self, key: &str, grace: Duration) {
        let Some(mut pod) = self.pods.remove(key) else { return };
        for c in &pod.containers {
            if let Some(child) = &c.child {
                signal(child, "TERM");
            }
        }
        let deadline = Instant::now() + grace;
        for c in &mut pod.containers {
            if let Some(mut child) = c.child.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                kill_container(&mut child);
            }
        }
        self.network.remove(key);
        let _ = std::fs::remove_dir_all(pod.dir.join("volumes"));
        self.reported.remove(key);
    }

    /// Tells the API server the pod is gone (a kubelet's final delete).
    fn finish_deletion(&self, p: &Value) {
        let (ns, name) =
            (p["metadata"]["namespace"].as_str().unwrap_or("default"), p["metadata"]["name"].as_str().unwrap_or(""));
        let _ = self.kubectl.run(&["delete", "pod", name, "-n", ns, "--grace-period=0", "--force", "--wait=false"]);
    }

    /// Patches the pod's status if it changed since the last report.
    fn report(&mut self, key: &str) {
        let Some(pod) = self.pods.get(key) else { return };
        let now = rfc3339(SystemTime::now());
        let policy = pod.spec["restartPolicy"].as_str().unwrap_or("Always");
        // As a kubelet reports: a container that exited and will be started
        // again waits in CrashLoopBackOff, its exit in lastState.
        let status_of = |c: &Container| {
            let terminated = c.last_exit.as_ref().map(|(code, at)| {
                json!({"terminated": {"exitCode": code, "finishedAt": at, "startedAt": c.started_at, "reason": if *code == 0 { "Completed" } else { "Error" }}})
            });
            let (state, last) = match (&c.child, &c.last_exit) {
                (Some(_), _) => (json!({"running": {"startedAt": c.started_at}}), terminated),
                (None, Some((code, _))) if restarts_after(c.init, policy, *code) => (
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting the exited container"}}),
                    terminated,
                ),
                (None, Some(_)) => (terminated.unwrap_or_default(), None),
                (None, None) => (json!({"waiting": {"reason": "ContainerCreating"}}), None),
            };
            json!({"name": c.name, "ready": c.ready, "restartCount": c.restarts, "image": c.spec["image"],
                       "imageID": c.spec["image"], "containerID": format!("testbed://{}-{}", pod.uid, c.name),
                       "started": c.child.is_some(), "state": state, "lastState": last.unwrap_or(json!({}))})
        };
        let statuses: Vec<Value> = pod.containers.iter().filter(|c| !c.init).map(status_of).collect();
        let init_statuses: Vec<Value> = pod.containers.iter().filter(|c| c.init).map(status_of).collect();
        let failed_init = pod.spec["restartPolicy"].as_str() == Some("Never")
            && pod
                .containers
                .iter()
                .any(|c| c.init && c.child.is_none() && matches!(c.last_exit, Some((code, _)) if code != 0));
        let all_ready = pod.ready();
        let main: Vec<&Container> = pod.containers.iter().filter(|c| !c.init).collect();
        let running = main.iter().any(|c| c.child.is_some());
        let done = main.iter().all(|c| c.child.is_none() && c.last_exit.is_some())
            && pod.spec["restartPolicy"].as_str() != Some("Always");
        let phase = if failed_init {
            "Failed"
        } else if running {
            "Running"
        } else if done {
            if main.iter().all(|c| c.last_exit.as_ref().is_some_and(|(code, _)| *code == 0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else {
            "Pending"
        };
        let cond = |kind: &str, ok: bool| json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": null});
        let status = json!({"status": {
            "phase": phase, "podIP": pod.ip, "podIPs": [{"ip": pod.ip}], "hostIP": self.network.node_ip(),
            "startTime": pod.started,
            "conditions": [cond("Initialized", pod.initialized()), cond("Ready", all_ready), cond("ContainersReady", all_ready), cond("PodScheduled", true)],
            "containerStatuses": statuses,
            "initContainerStatuses": init_statuses,
        }});
        if self.reported.get(key) == Some(&status) {
            return;
        }
        let mut sent = status.clone();
        // Transition times only when something changed.
        for c in sent["status"]["conditions"].as_array_mut().into_iter().flatten() {
            c["lastTransitionTime"] = json!(now);
        }
        let out = self.kubectl.run(&[
            "patch",
            "pod",
            &pod.name,
            "-n",
            &pod.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &sent.to_string(),
        ]);
        if out.success {
            self.reported.insert(key.to_string(), status);
        }
    }
}

/// Whether a container that exited with `code` is started again: an init
/// container that succeeded is done; otherwise the pod's restart policy says.
fn restarts_after(init: bool, policy: &str, code: i32) -> bool {
    !(init && code == 0) && (policy == "Always" || policy == "OnFailure" && code != 0)
}
