//! Prints the EtcdCluster CRD as YAML, generated from the Rust types; the
//! output is committed as `crds/ferrocd.io_etcdclusters.yaml` (a test checks
//! that it is current).

fn main() -> anyhow::Result<()> {
    print!("{}", ferrocd_operator::crd::crd_yaml()?);
    Ok(())
}
