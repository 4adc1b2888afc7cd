//! The operator's Helm chart, offline: `helm lint --strict`, its rendered
//! manifests (CRD included) valid for Kubernetes, its values schema refusing
//! bad values. (It is installed on the test bed in the operator's tests.)

use std::process::Command;

use ferrocd_tests::command::{run, Output};
use ferrocd_tests::tools;

fn chart() -> String {
    tools::workspace_root().join("charts/ferrocd-operator").to_string_lossy().into_owned()
}

fn helm(args: &[&str]) -> Option<Output> {
    let helm = tools::require_tool("helm")?;
    let mut cmd = Command::new(helm);
    cmd.args(args);
    Some(run(cmd, None))
}

#[test]
fn the_chart_lints_strictly_and_renders_valid_manifests() {
    let Some(lint) = helm(&["lint", "--strict", &chart()]) else { return };
    assert!(lint.success, "helm lint --strict:\n{}{}", lint.stdout, lint.stderr);
    let Some(validate) = tools::require_tool("kubernetes-validate") else { return };
    let chart = chart();
    for values in [&[][..], &["--set", "watchNamespace=db", "--set", "serviceAccount.create=false"][..]] {
        let args = [&["template", "ops", &chart, "--include-crds", "--namespace", "ops"][..], values].concat();
        let rendered = helm(&args).expect("helm");
        assert!(rendered.success, "helm template: {}", rendered.stderr);
        for kind in ["CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Deployment"] {
            assert!(rendered.stdout.contains(&format!("kind: {kind}")), "no {kind} rendered");
        }
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), &rendered.stdout).expect("write manifests");
        let mut cmd = Command::new(&validate);
        cmd.args(["--strict", &file.path().to_string_lossy()]);
        let checked = run(cmd, None);
        assert!(checked.success, "kubernetes-validate --strict:\n{}{}", checked.stdout, checked.stderr);
        assert!(!checked.stdout.contains("ERROR") && !checked.stdout.contains("FAIL"), "{}", checked.stdout);
    }
}

#[test]
fn the_values_schema_refuses_bad_values_with_a_clear_message() {
    for (set, names) in [
        ("metrics.port=0", "/metrics/port"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("replicas=0", "/replicas"),
        ("replicas=2,leaderElection=false", "/replicas"),
        ("replica=2", "replica"),
        ("logJson=maybe", "/logJson"),
    ] {
        let Some(out) = helm(&["template", "ops", &chart(), "--set", set]) else { return };
        assert!(!out.success, "--set {set} was accepted");
        assert!(out.stderr.contains(names), "--set {set}: {}", out.stderr);
    }
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let shipped = tools::workspace_root().join("charts/ferrocd-operator/crds/ferrocd.io_etcdclusters.yaml");
    let generated = tools::workspace_root().join("crds/ferrocd.io_etcdclusters.yaml");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(read(&shipped), read(&generated), "the chart's CRD is not crds/'s");
}
