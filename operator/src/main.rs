//! ferrocd-operator: reconciles EtcdCluster resources into ferrocd clusters.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use ferrocd_operator::controller::{self, Context};
use ferrocd_operator::leader_election::LeaderElection;
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
    /// Act only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

/// The leader Lease's name.
const LEASE: &str = "ferrocd-operator";

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
    // Replicas waiting for the Lease serve /healthz meanwhile.
    let election = cli.leader_elect.then(|| {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{}-{}", std::env::var("HOSTNAME").unwrap_or_default(), std::process::id()));
        LeaderElection::new(ctx.client.clone(), &cli.leader_election_namespace, LEASE, &identity)
    });
    if let Some(e) = &election {
        e.acquire().await.context("acquiring the leader lease")?;
    }
    let lost = async {
        match &election {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        () = controller::run(Arc::new(ctx), cli.namespace) => Ok(()),
        e = lost => Err(anyhow::Error::from(e)).context("stopping so that two operators never act at once"),
        served = listener => match served {
            Ok(Err(e)) => Err(e).with_context(|| format!("serving metrics on {address}")),
            _ => Ok(()),
        },
    };
    // A clean stop hands the Lease over at once.
    if let Some(e) = &election {
        e.release().await;
    }
    outcome
}
