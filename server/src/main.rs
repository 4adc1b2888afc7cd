use std::process::ExitCode;

use clap::Parser;
use ferrocd::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cfg = Config::parse();
    init_logging(&cfg.log_level);
    let runtime = match runtime().build() {
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

/// The async runtime serves the client and peer APIs. The raft and apply
/// threads keep about one core busy under load, so by default the runtime
/// gets the other cores: an idle extra worker costs a wake-up for nearly
/// every task spawned, which on 2 cores cost 20-30 µs of CPU per request
/// and no throughput. `TOKIO_WORKER_THREADS` overrides the count.
fn runtime() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder
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
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, stopping"),
        _ = int.recv() => tracing::info!("received SIGINT, stopping"),
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
