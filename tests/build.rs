//! Client stubs for etcd's API from the server's proto files, so tests can
//! send exact requests (and compare whole responses) to ferrocd and etcd.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["../server/proto/etcdserverpb/rpc.proto"];
    let descriptors = protox::compile(files, ["../server/proto"])?;
    tonic_prost_build::configure().build_server(false).build_client(true).compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=../server/proto");
    Ok(())
}
