//! One server process (ferrocd, or a real etcd for comparison) on loopback
//! ports with its own data dir; it can be killed, stopped and restarted.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cpus;
use crate::ports::free_port;
use crate::tools;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one member listens and what it is called.
#[derive(Debug, Clone)]
pub struct Seat {
    pub name: String,
    pub host: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// The network namespace it runs in (see `netns`), if not this one.
    pub netns: Option<String>,
    /// How clients reach it over TLS (its client URLs are `https://`).
    pub client_tls: Option<crate::certs::ClientTls>,
    /// Its peer URLs are `https://`.
    pub peer_tls: bool,
}

impl Seat {
    /// On loopback, on ports free now.
    pub fn new(name: &str) -> Seat {
        Seat {
            name: name.to_string(),
            host: "127.0.0.1".into(),
            client_port: free_port(),
            peer_port: free_port(),
            netns: None,
            client_tls: None,
            peer_tls: false,
        }
    }

    /// In network namespace `netns` at address `host` (etcd's own ports).
    pub fn in_netns(name: &str, host: &str, netns: &str) -> Seat {
        Seat {
            name: name.to_string(),
            host: host.to_string(),
            client_port: 2379,
            peer_port: 2380,
            netns: Some(netns.to_string()),
            client_tls: None,
            peer_tls: false,
        }
    }

    pub fn client_url(&self) -> String {
        let scheme = if self.client_tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.client_port)
    }

    pub fn peer_url(&self) -> String {
        let scheme = if self.peer_tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.peer_port)
    }

    /// How an etcd client connects to it.
    pub fn connect_options(&self) -> Option<etcd_client::ConnectOptions> {
        self.client_tls.as_ref().map(|t| etcd_client::ConnectOptions::new().with_tls(t.etcd.clone()))
    }

    /// `name=peer-url`, as `--initial-cluster` lists it.
    pub fn cluster_entry(&self) -> String {
        format!("{}={}", self.name, self.peer_url())
    }
}

pub struct Member {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The CPUs it runs on (a `taskset -c` list), or any.
    cpus: Option<String>,
    dir: tempfile::TempDir,
    client_url: String,
    connect: Option<etcd_client::ConnectOptions>,
    netns: Option<String>,
    child: Option<Child>,
}

impl Member {
    /// Starts a ferrocd member with etcd's flags plus `extra`.
    pub async fn ferrocd(extra: &[&str]) -> Member {
        Member::start(tools::ferrocd_bin(), extra).await
    }

    /// etcd 3.5.1 and ferrocd, both with etcd's flags plus `extra`, for tests
    /// that compare the two; None (the test skips) when etcd is not installed,
    /// outside CI.
    pub async fn etcd_and_ferrocd(extra: &[&str]) -> Option<(Member, Member)> {
        let etcd = Member::start(tools::require_tool("etcd-3.5")?, extra).await;
        Some((etcd, Member::ferrocd(extra).await))
    }

    /// Starts any binary that takes etcd's flags (ferrocd or etcd).
    pub async fn start(bin: PathBuf, extra: &[&str]) -> Member {
        Member::start_with_env(bin, extra, &[]).await
    }

    /// Like `start`, with extra environment variables (e.g. `ETCD_*`).
    pub async fn start_with_env(bin: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Member {
        Member::launch(bin, extra, env, None, |_| ()).await
    }

    /// Like `start`, on the given CPUs only (a `taskset -c` list).
    pub async fn start_on_cpus(bin: PathBuf, extra: &[&str], cpus: Option<&str>) -> Member {
        Member::launch(bin, extra, &[], cpus, |_| ()).await
    }

    /// A ferrocd member whose data dir `prepare` fills first (e.g. a restore).
    pub async fn ferrocd_on(prepare: impl FnOnce(&Path), extra: &[&str]) -> Member {
        Member::launch(tools::ferrocd_bin(), extra, &[], None, prepare).await
    }

    /// Like `ferrocd_on`, for a data dir it may refuse: the member once
    /// ready, or its log once it has exited instead.
    pub async fn try_ferrocd_on(prepare: impl FnOnce(&Path), extra: &[&str]) -> Result<Member, String> {
        let mut member = Member::prepare(tools::ferrocd_bin(), extra, &[], None, prepare);
        member.try_spawn().await.map(|()| member)
    }

    async fn launch(
        bin: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
        cpus: Option<&str>,
        prepare: impl FnOnce(&Path),
    ) -> Member {
        let mut member = Member::prepare(bin, extra, env, cpus, prepare);
        member.spawn().await;
        member
    }

    /// A lone ferrocd member at `seat` (e.g. one with TLS): once ready, or
    /// its log once it has exited instead.
    pub async fn try_ferrocd_at(seat: &Seat, extra: &[&str]) -> Result<Member, String> {
        let mut member =
            Member::prepare_seat(tools::ferrocd_bin(), seat, &seat.cluster_entry(), extra, &[], None, |_| ());
        member.try_spawn().await.map(|()| member)
    }

    fn prepare(
        bin: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
        cpus: Option<&str>,
        prepare: impl FnOnce(&Path),
    ) -> Member {
        let seat = Seat::new("m0");
        let cluster = seat.cluster_entry();
        Member::prepare_seat(bin, &seat, &cluster, extra, env, cpus, prepare)
    }

    /// A member at `seat` of the cluster `initial_cluster` (not started),
    /// on the given CPUs only (a `taskset -c` list) or any.
    pub fn in_cluster(bin: PathBuf, seat: &Seat, initial_cluster: &str, extra: &[&str], cpus: Option<&str>) -> Member {
        Member::prepare_seat(bin, seat, initial_cluster, extra, &[], cpus, |_| ())
    }

    fn prepare_seat(
        bin: PathBuf,
        seat: &Seat,
        initial_cluster: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        cpus: Option<&str>,
        prepare: impl FnOnce(&Path),
    ) -> Member {
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (seat.client_url(), seat.peer_url());
        let data = dir.path().join("data");
        let mut args: Vec<String> = vec![
            "--name".into(),
            seat.name.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer,
            "--initial-cluster".into(),
            initial_cluster.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        prepare(&data);
        let cpus = cpus.map(str::to_string);
        Member {
            bin,
            args,
            env,
            cpus,
            dir,
            client_url: seat.client_url(),
            connect: seat.connect_options(),
            netns: seat.netns.clone(),
            child: None,
        }
    }

    async fn spawn(&mut self) {
        if let Err(log) = self.try_spawn().await {
            panic!("{} exited while starting:\n{log}", self.bin.display());
        }
    }

    /// Starts the process and waits until it serves; if it exits first,
    /// returns its exit status and the end of its log.
    async fn try_spawn(&mut self) -> Result<(), String> {
        self.launch_process();
        self.wait_ready().await
    }

    /// Starts the process without waiting for it (cluster members wait for
    /// each other).
    pub fn launch_process(&mut self) {
        let log = File::options().create(true).append(true).open(self.log_path()).expect("log file");
        let mut command = match &self.netns {
            // `ip netns exec` execs the program: the PID is the member's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => cpus::command(&self.bin, self.cpus.as_deref()),
        };
        let child = command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Waits until the member serves and knows a leader; Err with its exit
    /// status and log if it exits first.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("exit {status}\n{}", self.log_tail()));
            }
            if let Ok(mut c) = self.try_client().await {
                match c.status().await {
                    Ok(s) if s.leader() != 0 => return Ok(()),
                    Ok(_) => {}
                    // Serving, with auth on: Status wants a user.
                    Err(etcd_client::Error::GRpcStatus(s)) if s.message() == "etcdserver: user name is empty" => {
                        return Ok(())
                    }
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                panic!("{} not ready after {READY_TIMEOUT:?}:\n{}", self.bin.display(), self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        self.client_url.clone()
    }

    pub async fn client(&self) -> etcd_client::Client {
        self.try_client().await.expect("connect to member")
    }

    pub async fn try_client(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        etcd_client::Client::connect([self.endpoint()], self.connect.clone()).await
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("member.log")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after 10 s. Returns whether
    /// it exited cleanly (status 0) on its own.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Starts again on the same data dir and ports (stopping it first if running).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Like `restart`, for a data dir it may refuse: Err holds its exit
    /// status and the end of its log.
    pub async fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.try_spawn().await
    }

    /// Stops it with SIGTERM (it must exit cleanly), then starts it again.
    pub async fn restart_gracefully(&mut self) {
        assert!(self.stop(), "did not stop cleanly:\n{}", self.log_tail());
        self.spawn().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Its resident memory now (0 when it is not running).
    pub fn rss_bytes(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the value of flag `name` (added if absent) for the next start.
    pub fn set_flag(&mut self, name: &str, value: &str) {
        match self.args.iter().position(|a| a == name) {
            Some(i) => self.args[i + 1] = value.to_string(),
            None => self.args.extend([name.to_string(), value.to_string()]),
        }
    }

    /// Empties its data dir (the member must not be running).
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "wipe of a running member");
        let _ = std::fs::remove_dir_all(self.data_dir());
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}
