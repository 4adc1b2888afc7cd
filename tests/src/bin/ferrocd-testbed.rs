//! Runs the local Kubernetes test bed (`ferrocd_tests::testbed`) until
//! SIGTERM or SIGINT: `scripts/kube-testbed.sh up|down` drives it.
//! Writes `DIR/kubeconfig` and, once the node is Ready, `DIR/ready`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferrocd_tests::testbed::TestBed;

#[derive(Parser)]
struct Args {
    /// Where logs, the kubeconfig and the ready mark go.
    #[arg(long)]
    dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let ready = args.dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let Some(bed) = TestBed::start(&args.dir).await else {
            eprintln!("the test bed cannot start here (see above)");
            return ExitCode::FAILURE;
        };
        let kubeconfig = args.dir.join("kubeconfig");
        if let Err(e) = std::fs::copy(bed.kubeconfig(), &kubeconfig).and_then(|_| std::fs::write(&ready, b"")) {
            eprintln!("cannot write {}: {e}", kubeconfig.display());
            return ExitCode::FAILURE;
        }
        eprintln!("test bed ready: KUBECONFIG={}", kubeconfig.display());
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot watch for SIGTERM: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = std::fs::remove_file(&ready);
        bed.stop();
        eprintln!("test bed stopped");
        ExitCode::SUCCESS
    })
}
