//! ferrocd-operator: reconciles EtcdCluster resources into ferrocd clusters.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use ferrocd_operator::controller::{self, Context};
use ferrocd_operator::metrics::Metrics;
use ferrocd_operator::resources::Defaults;

#[derive(Parser)]
#[command(name = "ferrocd-operator", version, about = "Runs ferrocd clusters from EtcdCluster resources")]
struct Cli {
    /// Watch EtcdClusters in this namespace only (all namespaces when unset).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Image repository of ferrocd, tagged with an EtcdCluster's spec.version.
    #[arg(long, env = "FERROCD_IMAGE_REPOSITORY", default_value = "ghcr.io/ferrocd/ferrocd")]
    image_repository: String,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// How long a cluster's quorum must stay lost before the recovery its
    /// spec opts into (spec.quorumLossRecovery) starts.
    #[arg(long, env = "QUORUM_LOSS_GRACE", default_value = "2m", value_parser = humantime::parse_duration)]
    quorum_loss_grace: std::time::Duration,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let client = kube::Client::try_default().await.context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let metrics = Metrics::new().context("metrics")?;
    let served = metrics.clone();
    let address = cli.metrics_address;
    let listener = tokio::spawn(async move { served.serve(address).await });
    let defaults = Defaults { image_repository: cli.image_repository };
    let ctx = Context::new(client, defaults, metrics, cli.quorum_loss_grace)
        .await
        .context("asking the API server what it serves")?;
    tracing::info!(namespace = ?cli.namespace, metrics = %address, "ferrocd-operator started");
    tokio::select! {
        () = controller::run(Arc::new(ctx), cli.namespace) => Ok(()),
        served = listener => match served {
            Ok(Err(e)) => Err(e).with_context(|| format!("serving metrics on {address}")),
            _ => Ok(()),
        },
    }
}
