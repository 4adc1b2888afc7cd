//! Command-line arguments, in the shape of etcd's `tools/benchmark`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use super::workload::{KeySpec, Limit, RunOptions, Workload};

#[derive(Debug, Parser)]
#[command(name = "ferrocd-bench", about = "Benchmark any etcd-compatible server; compare ferrocd with etcd")]
pub struct Cli {
    /// Comma-separated client endpoints.
    #[arg(long, global = true, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent clients (requesters), sharing the connections.
    #[arg(long, global = true, default_value_t = 1)]
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
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    #[arg(long)]
    pub sequential_keys: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put keys.
    Put(KeyArgs),
    /// Range over a key or a prefix.
    Range {
        key: String,
        #[arg(long)]
        prefix: bool,
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
        #[arg(long, default_value_t = 0)]
        limit: i64,
    },
    /// Txns of puts.
    TxnPut {
        #[command(flatten)]
        keys: KeyArgs,
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Watch event delivery latency: watchers on keys, then puts to them.
    Watch {
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        #[arg(long, default_value_t = 10)]
        watched_keys: usize,
    },
    /// Lease keepalive round trips.
    LeaseKeepalive,
    /// Start etcd 3.5.1 and ferrocd here, run the same workloads alternately,
    /// print medians and ratios ferrocd/etcd.
    Compare {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Requests per throughput workload.
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
    },
}

impl Cli {
    pub fn run_options(&self) -> RunOptions {
        let limit = match (self.total, self.duration) {
            (_, Some(secs)) => Limit::Duration(Duration::from_secs(secs)),
            (Some(n), None) => Limit::Total(n),
            (None, None) => Limit::Total(10_000),
        };
        RunOptions {
            endpoints: self.endpoints.clone(),
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
    /// The workload a command runs; `None` for `compare`.
    pub fn workload(&self) -> Option<Workload> {
        Some(match self {
            Command::Put(k) => Workload::Put(k.spec()),
            Command::Range { key, prefix, consistency, limit } => Workload::Range {
                key: key.clone(),
                prefix: *prefix,
                serializable: *consistency == Consistency::S,
                limit: *limit,
            },
            Command::TxnPut { keys, txn_ops } => Workload::TxnPut { keys: keys.spec(), ops: *txn_ops },
            Command::Watch { watchers, watched_keys } => Workload::Watch { watchers: *watchers, keys: *watched_keys },
            Command::LeaseKeepalive => Workload::LeaseKeepalive,
            Command::Compare { .. } => return None,
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
    }
}
