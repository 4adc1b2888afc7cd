//! A private network for a cluster, so that a test can cut members off:
//! a bridge in the test's own network namespace and one namespace per
//! member, joined to the bridge by a veth pair. Clients (the test) reach the
//! members from the bridge's address. Cutting a member off replaces its
//! route to the subnet with a route to the bridge's address alone: it still
//! answers clients, but it can neither reach its peers nor answer them (a
//! partition in both directions). Needs root and `ip` (iproute2); everything
//! made is deleted on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Net {
    tag: String,
    subnet: u8,
    members: usize,
}

/// Runs `ip ARGS` (iproute2); Err with what it printed.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    /// A network for `members` members, or why it cannot be made here.
    pub fn create(members: usize) -> Result<Net, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // A subnet no other interface uses (test binaries run one at a time;
        // tests within one count up).
        let mut subnet = ((pid + n * 17) % 200 + 20) as u8;
        for _ in 0..200 {
            let out =
                Command::new("ip").args(["-4", "addr", "show"]).output().map_err(|e| format!("cannot run ip: {e}"))?;
            if !String::from_utf8_lossy(&out.stdout).contains(&format!("10.213.{subnet}.")) {
                break;
            }
            subnet = subnet.wrapping_add(1).max(20);
        }
        let net = Net { tag: format!("f{}{n}", pid % 100_000), subnet, members: 0 };
        let mut net = net;
        ip(&["link", "add", &net.bridge(), "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.host_ip()), "dev", &net.bridge()])?;
        ip(&["link", "set", &net.bridge(), "up"])?;
        for i in 0..members {
            let (ns, host, inner) = (net.namespace(i), format!("{}h{i}", net.tag), net.inner(i));
            ip(&["netns", "add", &ns])?;
            net.members = i + 1;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &net.bridge()])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", net.member_ip(i)), "dev", &inner])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn inner(&self, i: usize) -> String {
        format!("{}m{i}", self.tag)
    }

    pub fn namespace(&self, i: usize) -> String {
        format!("{}ns{i}", self.tag)
    }

    /// The address clients reach members from.
    pub fn host_ip(&self) -> String {
        format!("10.213.{}.1", self.subnet)
    }

    pub fn member_ip(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 2)
    }

    fn subnet(&self) -> String {
        format!("10.213.{}.0/24", self.subnet)
    }

    fn in_ns(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let ns = self.namespace(i);
        let mut all = vec!["netns", "exec", &ns, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Cuts member `i` off its peers (clients still reach it).
    pub fn cut(&self, i: usize) {
        let inner = self.inner(i);
        self.in_ns(i, &["route", "del", &self.subnet(), "dev", &inner]).expect("remove the subnet route");
        self.in_ns(i, &["route", "add", &format!("{}/32", self.host_ip()), "dev", &inner]).expect("add the host route");
    }

    /// Joins member `i` to its peers again.
    pub fn heal(&self, i: usize) {
        let inner = self.inner(i);
        self.in_ns(i, &["route", "del", &format!("{}/32", self.host_ip()), "dev", &inner])
            .expect("remove the host route");
        self.in_ns(i, &["route", "add", &self.subnet(), "dev", &inner, "src", &self.member_ip(i)])
            .expect("add the subnet route");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.members {
            // A namespace outlives its deletion while sockets in TIME_WAIT
            // hold it: the veth pair goes now, with the host's end.
            let _ = ip(&["link", "del", &format!("{}h{i}", self.tag)]);
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
