//! Load generator for etcd-compatible servers, and `compare`: ferrocd and a
//! real etcd side by side on this machine.

use std::process::ExitCode;

use clap::Parser;
use ferrocd_tests::bench::cli::{Cli, Command};
use ferrocd_tests::bench::compare::{compare, CompareOptions};
use ferrocd_tests::bench::kube::{kube, KubeOptions};
use ferrocd_tests::bench::space::{space, SpaceOptions};
use ferrocd_tests::bench::workload;
use ferrocd_tests::tools;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.check() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Pinned before the runtime starts, so that tokio sizes its workers to
    // the CPUs allowed: two workers time-slicing on one CPU would put the
    // scheduler's 4 ms slices into every server's p99.
    if let Command::Compare { client_cpus: Some(cpus), .. } = &cli.command {
        if let Err(e) = ferrocd_tests::cpus::pin_this_process(cpus) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The etcd to compare with: the one given, else the installed 3.5.1.
fn etcd_bin(given: &Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    let found = given.clone().or_else(|| tools::require_tool("etcd-3.5"));
    if found.is_none() {
        eprintln!("no etcd binary: pass --etcd or run scripts/install-test-deps.sh");
    }
    found
}

async fn run(cli: Cli) -> ExitCode {
    if let Command::Compare { rounds, requests, size_keys, etcd, ferrocd, server_cpus, members, tls, .. } = &cli.command
    {
        let Some(etcd) = etcd_bin(etcd) else { return ExitCode::FAILURE };
        let opts = CompareOptions {
            rounds: *rounds,
            requests: *requests,
            size_keys: *size_keys,
            etcd,
            ferrocd: ferrocd.clone().unwrap_or_else(tools::ferrocd_bin),
            server_cpus: server_cpus.clone(),
            members: *members as usize,
            tls: *tls,
        };
        print!("{}", compare(&opts).await);
        return ExitCode::SUCCESS;
    }
    if let Command::Kube { objects, rounds, members, etcd, ferrocd } = &cli.command {
        let Some(etcd) = etcd_bin(etcd) else { return ExitCode::FAILURE };
        let opts = KubeOptions {
            etcd,
            ferrocd: ferrocd.clone().unwrap_or_else(tools::ferrocd_bin),
            objects: *objects,
            rounds: *rounds,
            members: *members as usize,
        };
        print!("{}", kube(&opts).await);
        return ExitCode::SUCCESS;
    }
    if let Command::Space { etcd, ferrocd } = &cli.command {
        let Some(etcd) = etcd_bin(etcd) else { return ExitCode::FAILURE };
        let opts = SpaceOptions { etcd, ferrocd: ferrocd.clone().unwrap_or_else(tools::ferrocd_bin) };
        print!("{}", space(&opts).await);
        return ExitCode::SUCCESS;
    }
    let Some(w) = cli.command.workload() else { return ExitCode::FAILURE };
    match workload::run(&w, &cli.run_options()).await {
        Ok(report) => {
            print!("{report}");
            if report.errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("cannot connect: {e}");
            ExitCode::FAILURE
        }
    }
}
