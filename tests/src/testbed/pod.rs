//! One pod on the test bed's node: its volumes as directories, its
//! containers as local processes in the pod's network namespace, each in a
//! mount namespace of its own where the volumes, `/etc/hosts` and
//! `/etc/resolv.conf` are bind-mounted at their paths.
//! Images are local binaries: an image named `…/ferrocd[:tag]` holds the
//! ferrocd and ferrocdutl binaries (ferrocd is its entrypoint), one named
//! `…/ferrocd-operator[:tag]` the operator's; any other runs the container's
//! command from the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kube::Kubectl;

/// The programs an image holds, its entrypoint first.
fn image_programs(image: &str) -> &'static [&'static str] {
    let name = image.rsplit('/').next().unwrap_or(image);
    match name.split([':', '@']).next().unwrap_or(name) {
        "ferrocd" => &["ferrocd", "ferrocdutl"],
        "ferrocd-operator" => &["ferrocd-operator"],
        _ => &[],
    }
}

/// Where an image's entrypoint is, for the images the test bed knows.
pub fn entrypoint(image: &str) -> Option<PathBuf> {
    image_programs(image).first().map(|p| crate::tools::sibling_bin(p))
}

/// A command run in a container of `image`: a program the image holds
/// (named by its path or bare name) is the local build of it.
pub fn resolve_command(image: &str, argv: &mut [String]) {
    let Some(first) = argv.first_mut() else { return };
    let name = first.rsplit('/').next().unwrap_or(first).to_string();
    if image_programs(image).contains(&name.as_str()) {
        *first = crate::tools::sibling_bin(&name).to_string_lossy().into_owned();
    }
}

pub struct Container {
    pub name: String,
    pub spec: Value,
    pub child: Option<Child>,
    pub restarts: u32,
    pub ready: bool,
    /// An init container: runs to completion, in order, before the others.
    pub init: bool,
    pub started_at: String,
    /// The last exit: (code, finished at).
    pub last_exit: Option<(i32, String)>,
    pub next_start: Instant,
    /// When the running process started, when its probes run next, and
    /// the liveness probe's failures in a row.
    pub since: Instant,
    pub next_probe: Instant,
    pub live_failures: u32,
}

impl Container {
    pub fn new(spec: &Value, init: bool) -> Container {
        Container {
            init,
            name: spec["name"].as_str().unwrap_or("c").to_string(),
            spec: spec.clone(),
            child: None,
            restarts: 0,
            ready: false,
            started_at: String::new(),
            last_exit: None,
            next_start: Instant::now(),
            since: Instant::now(),
            next_probe: Instant::now(),
            live_failures: 0,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.child.is_none() && matches!(self.last_exit, Some((0, _)))
    }

    fn probe(&self, kind: &str) -> Option<&Value> {
        self.spec.get(kind).filter(|p| p.is_object())
    }

    /// Whether the probes are due now; if so, the next time is set.
    pub fn probes_due(&mut self, now: Instant) -> bool {
        let secs =
            |kind: &str, field: &str, default: u64| self.probe(kind).and_then(|p| p[field].as_u64()).unwrap_or(default);
        let delay = secs("readinessProbe", "initialDelaySeconds", 0).min(secs(
            "livenessProbe",
            "initialDelaySeconds",
            u64::MAX,
        ));
        let period = secs("readinessProbe", "periodSeconds", 10).min(secs("livenessProbe", "periodSeconds", 10)).max(1);
        if now < self.since + Duration::from_secs(delay) || now < self.next_probe {
            return false;
        }
        self.next_probe = now + Duration::from_secs(period);
        true
    }

    pub fn readiness(&self) -> Option<&Value> {
        self.probe("readinessProbe")
    }

    pub fn liveness(&self) -> Option<&Value> {
        self.probe("livenessProbe")
    }
}

pub struct Pod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub spec: Value,
    pub netns: String,
    pub ip: String,
    pub dir: PathBuf,
    pub containers: Vec<Container>,
    pub started: String,
}

impl Pod {
    pub fn key(pod: &Value) -> String {
        pod["metadata"]["uid"].as_str().unwrap_or_default().to_string()
    }

    /// Makes the pod's volumes (directories) and files; the host paths it
    /// had to make go to `created`.
    pub fn prepare_volumes(
        &self,
        kubectl: &Kubectl,
        created: &mut Vec<PathBuf>,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        let mut out = BTreeMap::new();
        for v in self.spec["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let dir = self.dir.join("volumes").join(&name);
            let path = if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                // The provisioner made it; it goes with the test bed's cluster.
                let path = kubectl.claim_path(&self.namespace, claim)?;
                if !created.contains(&path) {
                    created.push(path.clone());
                }
                path
            } else if let Some(p) = v["hostPath"]["path"].as_str() {
                PathBuf::from(p)
            } else {
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    self.write_data(kubectl, "configmap", cm, &dir)?;
                } else if let Some(secret) = v["secret"]["secretName"].as_str() {
                    self.write_data(kubectl, "secret", secret, &dir)?;
                } else if let Some(items) = v["downwardAPI"]["items"].as_array() {
                    for item in items {
                        let field = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
                        let file = dir.join(item["path"].as_str().unwrap_or("unnamed"));
                        std::fs::write(&file, self.field(field)).map_err(|e| format!("{}: {e}", file.display()))?;
                    }
                }
                dir
            };
            if !path.exists() {
                std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                created.push(path.clone());
            }
            out.insert(name, path);
        }
        Ok(out)
    }

    /// A ConfigMap's or Secret's data, decoded.
    fn data_of(&self, kubectl: &Kubectl, kind: &str, name: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let obj = kubectl.json(&["get", kind, name, "-n", &self.namespace])?;
        let mut data = BTreeMap::new();
        for (key, value) in obj["data"].as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            let bytes = if kind == "secret" {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("{kind} {name}: {e}"))?
            } else {
                text.as_bytes().to_vec()
            };
            data.insert(key.clone(), bytes);
        }
        Ok(data)
    }

    fn write_data(&self, kubectl: &Kubectl, kind: &str, name: &str, dir: &Path) -> Result<(), String> {
        for (key, bytes) in self.data_of(kubectl, kind, name)? {
            let file = dir.join(&key);
            std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        Ok(())
    }

    /// A downward API field.
    pub fn field(&self, path: &str) -> String {
        let m = &self.spec;
        match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "metadata.uid" => self.uid.clone(),
            "status.podIP" => self.ip.clone(),
            "spec.nodeName" => m["nodeName"].as_str().unwrap_or_default().to_string(),
            "spec.serviceAccountName" => m["serviceAccountName"].as_str().unwrap_or_default().to_string(),
            _ => String::new(),
        }
    }

    /// Every container ready.
    pub fn ready(&self) -> bool {
        let mut main = self.containers.iter().filter(|c| !c.init).peekable();
        main.peek().is_some() && main.all(|c| c.ready)
    }

    /// Every init container has run to success.
    pub fn initialized(&self) -> bool {
        self.containers.iter().filter(|c| c.init).all(Container::succeeded)
    }

    /// The pod's hostname (`spec.hostname`, else its name).
    pub fn hostname(&self) -> String {
        self.spec["hostname"].as_str().unwrap_or(&self.name).to_string()
    }

    /// Starts container `i` (its previous process has exited).
    /// Starts container `i`; host paths it had to make (volumes, mount
    /// points) go to `created`, for the node to remove when it stops.
    pub fn start(
        &mut self,
        i: usize,
        kubectl: &Kubectl,
        api: (&str, u16),
        created: &mut Vec<PathBuf>,
    ) -> Result<(), String> {
        let (api_host, api_port) = api;
        let volumes = self.prepare_volumes(kubectl, created)?;
        let spec = self.containers[i].spec.clone();
        let image = spec["image"].as_str().unwrap_or_default();
        let mut argv: Vec<String> = spec["command"]
            .as_array()
            .map(|c| c.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if argv.is_empty() {
            let bin = entrypoint(image).ok_or(format!("image {image} has no known entrypoint; give a command"))?;
            argv.push(bin.to_string_lossy().into_owned());
        }
        resolve_command(image, &mut argv);
        argv.extend(spec["args"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)));
        let mut env: Vec<(String, String)> = vec![
            ("KUBERNETES_SERVICE_HOST".into(), api_host.into()),
            ("KUBERNETES_SERVICE_PORT".into(), api_port.to_string()),
            ("HOSTNAME".into(), self.hostname()),
        ];
        for e in spec["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            let from = &e["valueFrom"];
            let key_ref = [("secret", &from["secretKeyRef"]), ("configmap", &from["configMapKeyRef"])]
                .into_iter()
                .find(|(_, r)| r.is_object());
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else if let Some(f) = from["fieldRef"]["fieldPath"].as_str() {
                self.field(f)
            } else if let Some((kind, r)) = key_ref {
                let (obj, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
                let data = self.data_of(kubectl, kind, obj)?;
                let bytes = data.get(key).ok_or(format!("{kind} {obj} has no key {key}"))?;
                String::from_utf8_lossy(bytes).into_owned()
            } else {
                String::new()
            };
            env.push((name, value));
        }
        // The mounts, then the program, in a mount namespace of its own.
        let mut script = String::from("set -e\n");
        let mut binds = vec![(self.dir.join("hosts"), PathBuf::from("/etc/hosts"))];
        binds.push((self.dir.join("resolv.conf"), PathBuf::from("/etc/resolv.conf")));
        for m in spec["volumeMounts"].as_array().into_iter().flatten() {
            let (Some(name), Some(path)) = (m["name"].as_str(), m["mountPath"].as_str()) else { continue };
            if let Some(src) = volumes.get(name) {
                let src = match m["subPath"].as_str().filter(|p| !p.is_empty()) {
                    Some(sub) => src.join(sub),
                    None => src.clone(),
                };
                binds.push((src, PathBuf::from(path)));
            }
        }
        for (src, dst) in binds {
            // A mount point must exist; the host's filesystem is the pod's.
            if !dst.exists() {
                let made = if src.is_dir() { std::fs::create_dir_all(&dst) } else { std::fs::write(&dst, b"") };
                made.map_err(|e| format!("mount point {}: {e}", dst.display()))?;
                created.push(dst.clone());
            }
            script.push_str(&format!("mount --bind '{}' '{}'\n", src.display(), dst.display()));
        }
        script.push_str(&format!("hostname '{}'\nexec \"$@\"\n", self.hostname()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.containers[i].name)))
            .map_err(|e| e.to_string())?;
        let mut c = Command::new("ip");
        // Its own process group: stopping the container stops what it started.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        c.args([
            "netns",
            "exec",
            &self.netns,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .args(&argv)
        .envs(env)
        .current_dir(spec["workingDir"].as_str().unwrap_or("/"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
        let child = c.spawn().map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
        let container = &mut self.containers[i];
        container.child = Some(child);
        container.started_at = super::node::rfc3339(std::time::SystemTime::now());
        container.ready = container.readiness().is_none();
        container.since = Instant::now();
        container.next_probe = Instant::now();
        container.live_failures = 0;
        Ok(())
    }

    /// Runs a probe or hook handler against container `i`: exec in its
    /// namespaces, an HTTP GET or a TCP connect to the pod's address.
    pub fn handler_passes(&self, i: usize, handler: &Value) -> bool {
        if let Some(cmd) = handler["exec"]["command"].as_array() {
            let Some(pid) = self.containers[i].child.as_ref().map(Child::id) else { return false };
            let mut argv: Vec<String> = cmd.iter().filter_map(Value::as_str).map(str::to_string).collect();
            resolve_command(self.containers[i].spec["image"].as_str().unwrap_or_default(), &mut argv);
            return Command::new("nsenter")
                .args(["--target", &pid.to_string(), "--mount", "--net", "--uts", "--"])
                .args(&argv)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        }
        // A port by number, or by the name of one of the container's ports.
        let port = |h: &Value| {
            let named = |name: &str| {
                let ports = self.containers[i].spec["ports"].as_array().cloned().unwrap_or_default();
                ports.iter().find(|p| p["name"] == name).and_then(|p| p["containerPort"].as_u64())
            };
            let number = h["port"].as_u64().or_else(|| h["port"].as_str().and_then(named));
            number.and_then(|p| u16::try_from(p).ok())
        };
        let timeout = Duration::from_secs(handler["timeoutSeconds"].as_u64().unwrap_or(1));
        if let Some(p) = port(&handler["tcpSocket"]) {
            let addr = format!("{}:{p}", self.ip).parse().expect("pod address");
            return std::net::TcpStream::connect_timeout(&addr, timeout).is_ok();
        }
        if let Some(p) = port(&handler["httpGet"]) {
            let path = handler["httpGet"]["path"].as_str().unwrap_or("/");
            return http_ok(&format!("{}:{p}", self.ip), path, timeout);
        }
        false
    }
}

/// A plain HTTP GET answered 200-399.
fn http_ok(addr: &str, path: &str, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(sock) = addr.parse() else { return false };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sock, timeout) else { return false };
    let _ = s.set_read_timeout(Some(timeout));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).is_err() {
        return false;
    }
    let code: u16 = std::str::from_utf8(&head[9..12]).ok().and_then(|c| c.parse().ok()).unwrap_or(0);
    (200..400).contains(&code)
}
