//! Command-line arguments, in the shape of etcd's `tools/benchmark`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use super::workload::{KeySpec, Limit, RunOptions, Workload};

#[derive(Debug, Parser)]
#[command(name = "ferrocd-bench", about = "Benchmark any etcd-compatible server; compare ferrocd with etcd")]
pub struct Cli {
    /// Comma-separated client endpoints.
    #[arg(long, global = true, default_value = DEFAULT_ENDPOINT, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// gRPC connections to each endpoint (clients take them in turn).
    #[arg(long, global = true, default_value_t = 1, value_parser = at_least_one)]
    pub conns: usize,
    /// Number of concurrent clients (requesters), sharing the connections.
    #[arg(long, global = true, default_value_t = 1, value_parser = at_least_one)]
    pub clients: usize,
    /// Total number of requests.
    #[arg(long, global = true, conflicts_with = "duration")]
    pub total: Option<u64>,
    /// Run for this many seconds instead of a total.
    #[arg(long, global = true)]
    pub duration: Option<u64>,
    /// No progress bar.
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys written.
    #[arg(long, default_value_t = 1, value_parser = at_least_one_u64)]
    pub key_space_size: u64,
    /// Write keys 0, 1, 2, ... in turn instead of at random.
    #[arg(long)]
    pub sequential_keys: bool,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn cpu_list(s: &str) -> Result<String, String> {
    crate::cpus::parse_list(s).map(|_| s.to_string())
}

fn at_least_one_u64(s: &str) -> Result<u64, String> {
    at_least_one(s).map(|n| n as u64)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put keys.
    Put(KeyArgs),
    /// Range over a key or a prefix.
    Range {
        /// The key, or the prefix with --prefix.
        key: String,
        /// Range over every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// l: linearizable, s: serializable.
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
        /// Most keys returned (0: no limit).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Txns of puts.
    TxnPut {
        #[command(flatten)]
        keys: KeyArgs,
        /// Puts per txn.
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        txn_ops: usize,
    },
    /// Watch event delivery latency: watchers on keys, then puts to them.
    Watch {
        /// Watchers, spread over the keys.
        #[arg(long, default_value_t = 100, value_parser = at_least_one)]
        watchers: usize,
        /// Keys watched and written.
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        watched_keys: usize,
    },
    /// Lease keepalive round trips.
    LeaseKeepalive,
    /// Start etcd 3.5.1 and ferrocd here, write the same data to each and
    /// print what their backends take on disk (after loading, defragmenting,
    /// compacting, restarting) and how many large values a 100 MB quota takes.
    Space {
        /// The etcd binary (default: .tools/bin/etcd-3.5).
        #[arg(long)]
        etcd: Option<PathBuf>,
        /// The ferrocd binary (default: next to this program).
        #[arg(long)]
        ferrocd: Option<PathBuf>,
    },
    /// Start kube-apiserver (scripts/install-kube.sh) on etcd 3.5.1 and on
    /// ferrocd here, alternately, and time the same kubectl work on each.
    Kube {
        /// ConfigMaps created, listed, patched and deleted per round.
        #[arg(long, default_value_t = 4000)]
        objects: usize,
        /// Rounds against each server.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Members of each server's cluster.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=7))]
        members: u32,
        /// The etcd binary (default: .tools/bin/etcd-3.5).
        #[arg(long)]
        etcd: Option<PathBuf>,
        /// The ferrocd binary (default: next to this program).
        #[arg(long)]
        ferrocd: Option<PathBuf>,
    },
    /// Start etcd 3.5.1 and ferrocd here, run the same workloads alternately,
    /// print medians and ratios ferrocd/etcd.
    Compare {
        /// Rounds of every workload against each server (0: only the size,
        /// memory and start-up figures).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Requests per throughput workload (ranges twice as many, lease
        /// keepalives ten times; one-client and watch runs a tenth).
        #[arg(long = "requests", default_value_t = 20_000)]
        requests: u64,
        /// Keys (256-byte values) loaded for the size, memory and start-up figures.
        #[arg(long, default_value_t = 100_000)]
        size_keys: u64,
        /// The etcd binary (default: .tools/bin/etcd-3.5).
        #[arg(long)]
        etcd: Option<PathBuf>,
        /// The ferrocd binary (default: next to this program).
        #[arg(long)]
        ferrocd: Option<PathBuf>,
        /// Run both servers on these CPUs only (a `taskset -c` list, e.g. `0`).
        #[arg(long, value_parser = cpu_list)]
        server_cpus: Option<String>,
        /// Members of each server's cluster (loopback; clients spread over
        /// all of them). With more than one, the time from kill -9 of the
        /// leader to the next acknowledged write is measured too.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=7))]
        members: u32,
        /// Run the load generator (this program) on these CPUs only; servers
        /// started without --server-cpus inherit them.
        #[arg(long, value_parser = cpu_list)]
        client_cpus: Option<String>,
        /// TLS on both servers, clients and peers (certificates made for the run).
        #[arg(long)]
        tls: bool,
    },
}

/// The default of `--endpoints`.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

impl Cli {
    /// `compare` starts its own servers and sets its own load: options for
    /// a single run would be silently ignored, so they are refused.
    pub fn check(&self) -> Result<(), String> {
        let own = match self.command {
            Command::Compare { .. } => "compare",
            Command::Space { .. } => "space",
            Command::Kube { .. } => "kube",
            _ => return Ok(()),
        };
        let ignored = [
            ("--endpoints", self.endpoints != [DEFAULT_ENDPOINT]),
            ("--conns", self.conns != 1),
            ("--clients", self.clients != 1),
            ("--total", self.total.is_some()),
            ("--duration", self.duration.is_some()),
        ];
        match ignored.iter().find(|(_, given)| *given) {
            Some((name, _)) => Err(format!("{own} runs its own servers and workloads; {name} does not apply")),
            None => Ok(()),
        }
    }

    pub fn run_options(&self) -> RunOptions {
        let limit = match (self.total, self.duration) {
            (_, Some(secs)) => Limit::Duration(Duration::from_secs(secs)),
            (Some(n), None) => Limit::Total(n),
            (None, None) => Limit::Total(10_000),
        };
        RunOptions {
            endpoints: self.endpoints.clone(),
            tls: None,
            conns: self.conns,
            clients: self.clients,
            limit,
            progress: !self.no_progress,
        }
    }
}

impl KeyArgs {
    fn spec(&self) -> KeySpec {
        KeySpec {
            key_size: self.key_size,
            val_size: self.val_size,
            key_space_size: self.key_space_size,
            sequential: self.sequential_keys,
        }
    }
}

impl Command {
    /// The workload a command runs; `None` for `compare`, `space` and `kube`.
    pub fn workload(&self) -> Option<Workload> {
        Some(match self {
            Command::Put(k) => Workload::Put(k.spec()),
            Command::Range { key, prefix, consistency, limit } => Workload::Range {
                key: key.clone(),
                prefix: *prefix,
                serializable: *consistency == Consistency::S,
                limit: i64::from(*limit),
            },
            Command::TxnPut { keys, txn_ops } => Workload::TxnPut { keys: keys.spec(), ops: *txn_ops },
            Command::Watch { watchers, watched_keys } => Workload::Watch { watchers: *watchers, keys: *watched_keys },
            Command::LeaseKeepalive => Workload::LeaseKeepalive,
            Command::Compare { .. } | Command::Space { .. } | Command::Kube { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferrocd-bench").chain(args.iter().copied()))
    }

    #[test]
    fn put_arguments() {
        let cli = parse(&[
            "--endpoints",
            "a:1,b:2",
            "--conns",
            "4",
            "--clients",
            "64",
            "put",
            "--val-size",
            "256",
            "--key-space-size",
            "1000",
            "--sequential-keys",
            "--total",
            "500",
        ])
        .unwrap();
        let o = cli.run_options();
        assert_eq!(o.endpoints, ["a:1", "b:2"]);
        assert_eq!((o.conns, o.clients, o.limit), (4, 64, Limit::Total(500)));
        assert_eq!(
            cli.command.workload(),
            Some(Workload::Put(KeySpec { key_size: 8, val_size: 256, key_space_size: 1000, sequential: true }))
        );
    }

    #[test]
    fn range_duration_and_defaults() {
        let cli = parse(&["range", "foo", "--consistency", "s", "--prefix", "--duration", "3"]).unwrap();
        assert_eq!(cli.run_options().limit, Limit::Duration(Duration::from_secs(3)));
        assert_eq!(
            cli.command.workload(),
            Some(Workload::Range { key: "foo".into(), prefix: true, serializable: true, limit: 0 })
        );
        let cli = parse(&["lease-keepalive"]).unwrap();
        assert_eq!((cli.run_options().limit, cli.run_options().clients), (Limit::Total(10_000), 1));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["put", "--total", "5", "--duration", "5"]).is_err(), "total and duration conflict");
        assert!(parse(&["range"]).is_err(), "range needs a key");
        assert!(parse(&["range", "k", "--consistency", "x"]).is_err());
        assert!(parse(&["put", "--val-size", "-1"]).is_err());
        for zero in [
            &["--clients", "0", "put"][..],
            &["--conns", "0", "put"],
            &["put", "--key-size", "0"],
            &["put", "--key-space-size", "0"],
            &["txn-put", "--txn-ops", "0"],
            &["watch", "--watchers", "0"],
            &["watch", "--watched-keys", "0"],
        ] {
            let e = parse(zero).unwrap_err().to_string();
            assert!(e.contains("must be at least 1"), "{zero:?}: {e}");
        }
    }

    #[test]
    fn compare_refuses_options_of_a_single_run() {
        assert_eq!(parse(&["compare", "--rounds", "0"]).unwrap().check(), Ok(()));
        for (args, name) in [
            (&["--clients", "64", "compare"][..], "--clients"),
            (&["compare", "--conns", "4"], "--conns"),
            (&["compare", "--total", "5"], "--total"),
            (&["compare", "--duration", "5"], "--duration"),
            (&["compare", "--endpoints", "http://10.0.0.1:2379"], "--endpoints"),
        ] {
            let e = parse(args).unwrap().check().unwrap_err();
            assert!(e.contains(name), "{args:?}: {e}");
        }
        let cli = parse(&["compare", "--server-cpus", "0", "--client-cpus", "1-3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Compare { server_cpus: Some(ref s), client_cpus: Some(ref c), .. } if s == "0" && c == "1-3"
        ));
        assert!(parse(&["compare", "--server-cpus", "x"]).is_err());
        // Workloads take them all.
        assert_eq!(parse(&["--clients", "64", "put", "--total", "5"]).unwrap().check(), Ok(()));
    }
}
