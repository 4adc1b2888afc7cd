use std::process::ExitCode;

use clap::Parser;
use ferrocd::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// jemalloc: glibc's malloc was ~16 % of server CPU under load (its
/// consolidation of freed chunks); jemalloc cut CPU per put by 10-15 % with
/// the same RSS.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cfg = Config::parse();
    init_logging(&cfg.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "ferrocd stopped with an error");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        etcd_api = ferrocd::config::ETCD_API_VERSION,
        "starting ferrocd"
    );
    let mut etcd = ferrocd::embed::start(cfg).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let removed = etcd.removed();
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, stopping"),
        _ = int.recv() => tracing::info!("received SIGINT, stopping"),
        _ = removed => {
            tracing::warn!("the member has been permanently removed from the cluster; stopping");
        }
        result = etcd.node_failed() => {
            result?;
            anyhow::bail!("the raft node stopped unexpectedly");
        }
    }
    etcd.close().await?;
    tracing::info!("stopped");
    Ok(())
}

/// etcd's levels (debug, info, warn, error, panic, fatal) onto tracing's;
/// RUST_LOG, when set, refines them.
fn init_logging(level: &str) {
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{level},sled=warn")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
