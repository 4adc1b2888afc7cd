//! Compiles the wire protocol with a pure-Rust protobuf compiler (protox), so
//! building ferrocd needs nothing beyond cargo. Client stubs are built too,
//! for the multi-process tests and tools.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/ferrocdpb/internal.proto",
        "proto/ferrocdpb/peer.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    write_client_methods(&descriptors)?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

/// The gRPC methods of the client API (etcd's packages), each with its
/// go-grpc-prometheus `grpc_type`, for the metrics that count every call:
/// taken from the protos so that the list cannot drift from the services.
fn write_client_methods(set: &prost_types::FileDescriptorSet) -> Result<(), Box<dyn std::error::Error>> {
    const CLIENT_PACKAGES: [&str; 3] = ["etcdserverpb", "v3lockpb", "v3electionpb"];
    let mut out = String::from("pub const CLIENT_METHODS: &[(&str, &str, &str)] = &[\n");
    for file in set.file.iter().filter(|f| CLIENT_PACKAGES.contains(&f.package())) {
        for service in &file.service {
            for method in &service.method {
                let kind = match (method.client_streaming(), method.server_streaming()) {
                    (false, false) => "unary",
                    (true, false) => "client_stream",
                    (false, true) => "server_stream",
                    (true, true) => "bidi_stream",
                };
                out.push_str(&format!(
                    "    ({:?}, {:?}, {kind:?}),\n",
                    format!("{}.{}", file.package(), service.name()),
                    method.name()
                ));
            }
        }
    }
    out.push_str("];\n");
    let path = std::path::Path::new(&std::env::var("OUT_DIR")?).join("client_methods.rs");
    std::fs::write(path, out)?;
    Ok(())
}
