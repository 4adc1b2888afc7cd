//! Flags and `ETCD_*` environment variables, with etcd's names, meanings and
//! defaults, so ferrocd is a drop-in for an etcd member.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::mvcc::BatchLimits;

/// The etcd API version ferrocd implements. Clients (and kube-apiserver's
/// feature checks) read it from `Status.version`.
pub const ETCD_API_VERSION: &str = "3.5.13";

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompactionMode {
    Periodic,
    Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferrocd",
    about = "An etcd-compatible, strongly consistent key-value server",
    version = concat!(env!("CARGO_PKG_VERSION"), " (etcd API 3.5)")
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory (default: "<name>.etcd").
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// List of URLs to listen on for client traffic.
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", default_value = "http://localhost:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,

    /// List of this member's client URLs to advertise to the public.
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = "http://localhost:2379", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// List of URLs to listen on for peer traffic.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", default_value = "http://localhost:2380", value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,

    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,

    /// Initial cluster configuration for bootstrapping, "name=peerURL,...".
    /// Default: "<name>=<initial-advertise-peer-urls>".
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Initial cluster state ("new" or "existing").
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterState,

    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,

    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(
        long,
        env = "ETCD_STRICT_RECONFIG_CHECK",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub strict_reconfig_check: bool,

    /// Force to create a new one-member cluster: restarts this member (with
    /// its data) as the only member, removing every other one. The way out
    /// of a lost quorum; use it once, then drop the flag.
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub force_new_cluster: bool,

    /// Check every member's data against the peers' before serving (etcd's
    /// initial corruption check): a member whose data differs refuses to start.
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub experimental_initial_corrupt_check: bool,

    /// How often the leader compares every member's data (HashKV at the
    /// same revision) and raises the CORRUPT alarm for one that differs;
    /// 0 turns the check off (etcd's default).
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", default_value = "0s", value_parser = parse_duration)]
    pub experimental_corrupt_check_time: std::time::Duration,

    /// The maximum number of learner members the cluster may have at once.
    #[arg(long, env = "ETCD_EXPERIMENTAL_MAX_LEARNERS", default_value_t = 1)]
    pub experimental_max_learners: usize,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,

    /// Entries kept in memory behind a snapshot, so that a slow follower
    /// can catch up without a snapshot (etcd 3.5's
    /// --experimental-snapshot-catchup-entries).
    #[arg(
        long,
        alias = "experimental-snapshot-catchup-entries",
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5_000
    )]
    pub snapshot_catchup_entries: u64,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,

    /// The maximum time before the backend commits applied changes to
    /// disk in one batch (0 means 10ms; etcd's default is 100ms).
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", default_value = "0", value_parser = parse_duration)]
    pub backend_batch_interval: std::time::Duration,

    /// The maximum operations before the backend commits applied changes to
    /// disk in one batch (0 means 10000).
    #[arg(long, env = "ETCD_BACKEND_BATCH_LIMIT", default_value_t = 0)]
    pub backend_batch_limit: i64,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,

    /// Maximum concurrent streams that each client connection can open at a
    /// time (etcd's default is unlimited; clients queue streams past it).
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = 1000)]
    pub max_concurrent_streams: u32,

    /// Bytes of read responses one client connection may leave unread before
    /// its next reads wait for it (and fail with "too many requests" after
    /// the request timeout). ferrocd's own; 0 means no limit.
    #[arg(long, env = "FERROCD_MAX_UNREAD_RESPONSE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_unread_response_bytes: u64,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,

    /// List of URLs to listen on for the metrics and health endpoints.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,

    /// Interval between progress notifications to watchers that asked for
    /// them (a Go duration such as "10m" or "30s").
    #[arg(
        long,
        alias = "experimental-watch-progress-notify-interval",
        env = "ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_duration
    )]
    pub watch_progress_notify_interval: std::time::Duration,

    /// Interpretation of --auto-compaction-retention: "periodic" or "revision".
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", value_enum, default_value = "periodic")]
    pub auto_compaction_mode: CompactionMode,

    /// Auto compaction retention: for periodic mode a duration ("1h", "30m";
    /// a bare number means hours), for revision mode a number of revisions.
    /// 0 turns auto compaction off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Interval between checkpoints of lease TTLs through raft (ferrocd always
    /// checkpoints, and also when it stops; etcd 3.5 only with
    /// --experimental-enable-lease-checkpoint).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5m",
        value_parser = parse_duration
    )]
    pub experimental_lease_checkpoint_interval: std::time::Duration,

    /// Auth token type: "simple" (ferrocd does not issue JWT tokens).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,

    /// Seconds a simple token stays valid after its last use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// bcrypt cost of password hashes (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    #[command(flatten)]
    pub tls: crate::tls::TlsFlags,

    /// Log level: debug, info, warn, error, panic or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Durations as etcd's flags take them ("10m", "1h30m", "500ms").
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// What `--auto-compaction-mode` and `--auto-compaction-retention` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep this much history (by time).
    Periodic(std::time::Duration),
    /// Keep this many revisions.
    Revision(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("invalid --initial-cluster {0:?}: expected name=url[,name=url...]")]
    BadInitialCluster(String),
    #[error("--initial-cluster has no entry for this member ({0:?})")]
    NameNotInCluster(String),
    #[error("--initial-cluster lists {name:?} with {listed:?}, but --initial-advertise-peer-urls is {advertised:?}")]
    PeerUrlMismatch { name: String, listed: Vec<String>, advertised: Vec<String> },
    #[error("--election-timeout ({election}ms) must be at least 5 times --heartbeat-interval ({heartbeat}ms)")]
    BadTimeouts { election: u64, heartbeat: u64 },
    #[error("--snapshot-count must be greater than 0")]
    BadSnapshotCount,
    #[error("invalid --auto-compaction-retention {0:?} for this --auto-compaction-mode")]
    BadRetention(String),
    #[error("{0}")]
    Unsupported(String),
}

/// One member of `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl Config {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    pub fn quota_bytes(&self) -> u64 {
        match self.quota_backend_bytes {
            q if q <= 0 => 2 * 1024 * MIB,
            q => q as u64,
        }
    }

    /// When applied changes go to the backend on disk (the WAL holds them
    /// durably before that).
    pub fn batch_limits(&self) -> BatchLimits {
        let mut limits = BatchLimits::default();
        if !self.backend_batch_interval.is_zero() {
            limits.interval = self.backend_batch_interval;
        }
        if self.backend_batch_limit > 0 {
            limits.ops = self.backend_batch_limit as usize;
        }
        limits
    }

    /// Ticks of `--heartbeat-interval` after which a follower campaigns.
    pub fn election_ticks(&self) -> usize {
        (self.election_timeout / self.heartbeat_interval.max(1)) as usize
    }

    /// etcd's minimum lease TTL: 1.5 election timeouts, in whole seconds (rounded up).
    pub fn min_lease_ttl(&self) -> i64 {
        let ticks = (3 * self.election_ticks() / 2) as u64;
        (ticks * self.heartbeat_interval).div_ceil(1000) as i64
    }

    /// Members listed by `--initial-cluster` (grouping repeated names, as etcd
    /// does for members with several peer URLs), sorted by name.
    pub fn initial_members(&self) -> Result<Vec<InitialMember>, ConfigError> {
        let spec = match &self.initial_cluster {
            Some(s) => s.clone(),
            None => self
                .initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(","),
        };
        let mut members: Vec<InitialMember> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) = part.split_once('=').ok_or_else(|| ConfigError::BadInitialCluster(spec.clone()))?;
            parse_url(url)?;
            match members.iter_mut().find(|m| m.name == name) {
                Some(m) => m.peer_urls.push(url.to_string()),
                None => members.push(InitialMember { name: name.to_string(), peer_urls: vec![url.to_string()] }),
            }
        }
        if members.is_empty() {
            return Err(ConfigError::BadInitialCluster(spec));
        }
        for m in &mut members {
            m.peer_urls.sort();
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(members)
    }

    /// Checks the flags together, as etcd does before starting.
    /// The auto compaction retention, or None when it is off.
    pub fn auto_compaction(&self) -> Result<Option<Retention>, ConfigError> {
        let text = self.auto_compaction_retention.trim();
        let bad = || ConfigError::BadRetention(text.to_string());
        let retention = match self.auto_compaction_mode {
            CompactionMode::Revision => {
                Retention::Revision(text.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(bad)?)
            }
            CompactionMode::Periodic => Retention::Periodic(match text.parse::<u64>() {
                Ok(hours) => std::time::Duration::from_secs(hours * 3600),
                Err(_) => parse_duration(text).map_err(|_| bad())?,
            }),
        };
        let off = matches!(retention, Retention::Revision(0)) || retention == Retention::Periodic(Default::default());
        Ok((!off).then_some(retention))
    }

    pub fn validate(&self) -> Result<Vec<InitialMember>, ConfigError> {
        self.auto_compaction()?;
        if self.auth_token.split(',').next() != Some("simple") {
            return Err(ConfigError::Unsupported(format!(
                "--auth-token {:?}: ferrocd issues only simple tokens (--auth-token simple)",
                self.auth_token
            )));
        }
        if self.election_timeout < 5 * self.heartbeat_interval || self.heartbeat_interval == 0 {
            return Err(ConfigError::BadTimeouts {
                election: self.election_timeout,
                heartbeat: self.heartbeat_interval,
            });
        }
        if self.snapshot_count == 0 {
            return Err(ConfigError::BadSnapshotCount);
        }
        for url in self
            .listen_client_urls
            .iter()
            .chain(&self.advertise_client_urls)
            .chain(&self.listen_peer_urls)
            .chain(&self.initial_advertise_peer_urls)
            .chain(&self.listen_metrics_urls)
        {
            parse_url(url)?;
        }
        let members = self.initial_members()?;
        let me = members
            .iter()
            .find(|m| m.name == self.name)
            .ok_or_else(|| ConfigError::NameNotInCluster(self.name.clone()))?;
        let mut advertised = self.initial_advertise_peer_urls.clone();
        advertised.sort();
        if me.peer_urls != advertised {
            return Err(ConfigError::PeerUrlMismatch {
                name: self.name.clone(),
                listed: me.peer_urls.clone(),
                advertised,
            });
        }
        Ok(members)
    }
}

/// Whether a URL asks for TLS (its scheme, in any case).
pub fn is_https(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.scheme() == "https")
}

/// Parses an `http(s)://host:port` URL into the socket addresses to bind.
pub fn listen_addrs(url: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let (host, port) = parse_url(url)?;
    // etcd binds "localhost" to the IPv4 loopback only.
    let host = if host == "localhost" { "127.0.0.1".to_string() } else { host };
    let addrs: Vec<SocketAddr> =
        (host.as_str(), port).to_socket_addrs().map_err(|e| bad_url(url, &e.to_string()))?.collect();
    match addrs.first() {
        Some(first) => Ok(vec![*first]),
        None => Err(bad_url(url, "host does not resolve")),
    }
}

fn parse_url(url: &str) -> Result<(String, u16), ConfigError> {
    let parsed = url::Url::parse(url).map_err(|e| bad_url(url, &e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(bad_url(url, &format!("unsupported scheme {other:?}"))),
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| bad_url(url, "missing host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port().ok_or_else(|| bad_url(url, "missing port"))?;
    Ok((host, port))
}

fn bad_url(url: &str, reason: &str) -> ConfigError {
    ConfigError::BadUrl { url: url.to_string(), reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("ferrocd").chain(args.iter().copied())).expect("flags parse")
    }

    #[test]
    fn defaults_match_etcd() {
        let c = parse(&[]);
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(c.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(c.snapshot_count, 10_000);
        assert_eq!(c.snapshot_catchup_entries, 5_000);
        assert_eq!(parse(&["--experimental-snapshot-catchup-entries", "7"]).snapshot_catchup_entries, 7);
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.quota_bytes(), 2 * 1024 * 1024 * 1024);
        assert_eq!(c.election_ticks(), 10);
        let members = c.validate().expect("defaults are valid");
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].peer_urls, vec!["http://localhost:2380"]);
        assert_eq!(listen_addrs("http://localhost:2379").unwrap()[0].to_string(), "127.0.0.1:2379");
    }

    #[test]
    fn initial_cluster_follows_name_when_not_given() {
        let c = parse(&["--name", "n1", "--initial-advertise-peer-urls", "http://127.0.0.1:9000"]);
        assert_eq!(c.data_dir(), PathBuf::from("n1.etcd"));
        let m = c.validate().unwrap();
        assert_eq!(m[0].name, "n1");
        assert_eq!(m[0].peer_urls, vec!["http://127.0.0.1:9000"]);
    }

    #[test]
    fn rejects_bad_flags() {
        assert!(matches!(
            parse(&["--initial-cluster", "other=http://localhost:2380"]).validate(),
            Err(ConfigError::NameNotInCluster(_))
        ));
        assert!(matches!(
            parse(&["--listen-client-urls", "localhost:2379"]).validate(),
            Err(ConfigError::BadUrl { .. })
        ));
        assert!(matches!(parse(&["--election-timeout", "200"]).validate(), Err(ConfigError::BadTimeouts { .. })));
        assert!(Config::try_parse_from(["ferrocd", "--snapshot-count", "x"]).is_err());
    }
}
