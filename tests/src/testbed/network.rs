//! The node's pod network: a bridge with the node's address, and one
//! network namespace per pod joined to it by a veth pair, each with its own
//! address, so that every pod can listen on the same port as in a cluster.
//! Needs root and `ip` (iproute2); everything made is deleted on drop.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::netns::ip;

pub struct PodNetwork {
    tag: String,
    subnet: u8,
    /// Pod key -> (namespace, host-side veth, address's last byte).
    pods: Mutex<BTreeMap<String, (String, String, u8)>>,
}

impl PodNetwork {
    /// A bridge on a /24 no interface here uses yet.
    pub fn create() -> Result<PodNetwork, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Test beds in one process (tests run in parallel) differ by n.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let used =
            Command::new("ip").args(["-4", "addr", "show"]).output().map_err(|e| format!("cannot run ip: {e}"))?;
        let used = String::from_utf8_lossy(&used.stdout).into_owned();
        let subnet = (0..200u32)
            .map(|i| ((pid + n * 37 + i) % 200 + 20) as u8)
            .find(|s| !used.contains(&format!("10.214.{s}.")))
            .ok_or("no free 10.214.x.0/24 subnet")?;
        let tag = format!("k{}{n}", pid % 100_000);
        let net = PodNetwork { tag, subnet, pods: Mutex::new(BTreeMap::new()) };
        ip(&["link", "add", &net.bridge(), "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.node_ip()), "dev", &net.bridge()])?;
        ip(&["link", "set", &net.bridge(), "up"])?;
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// The node's address on the pod network (the API server binds it).
    pub fn node_ip(&self) -> String {
        format!("10.214.{}.1", self.subnet)
    }

    /// Gives the pod `key` a namespace and an address; returns both.
    pub fn add(&self, key: &str) -> Result<(String, String), String> {
        let mut pods = self.pods.lock().expect("pod network lock");
        if let Some((ns, _, last)) = pods.get(key) {
            return Ok((ns.clone(), self.address(*last)));
        }
        let last = (2..255u8).find(|n| !pods.values().any(|(_, _, l)| l == n)).ok_or("the pod network is full")?;
        let (ns, host, inner) =
            (format!("{}p{last}", self.tag), format!("{}h{last}", self.tag), format!("{}i{last}", self.tag));
        let _ = ip(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
        ip(&["link", "set", &inner, "netns", &ns])?;
        ip(&["link", "set", &host, "master", &self.bridge()])?;
        ip(&["link", "set", &host, "up"])?;
        let addr = self.address(last);
        ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{addr}/24"), "dev", &inner])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        pods.insert(key.to_string(), (ns.clone(), host, last));
        Ok((ns, addr))
    }

    fn address(&self, last: u8) -> String {
        format!("10.214.{}.{last}", self.subnet)
    }

    /// Takes the pod's namespace and address back.
    pub fn remove(&self, key: &str) {
        if let Some((ns, host, _)) = self.pods.lock().expect("pod network lock").remove(key) {
            let _ = ip(&["link", "del", &host]);
            let _ = ip(&["netns", "del", &ns]);
        }
    }

    /// Cuts the pod off the network (its link goes down) or joins it again.
    pub fn set_connected(&self, key: &str, connected: bool) -> Result<(), String> {
        let pods = self.pods.lock().expect("pod network lock");
        let (_, host, _) = pods.get(key).ok_or_else(|| format!("no pod {key} on this network"))?;
        ip(&["link", "set", host, if connected { "up" } else { "down" }])
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let keys: Vec<String> = self.pods.lock().expect("pod network lock").keys().cloned().collect();
        for k in keys {
            self.remove(&k);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
