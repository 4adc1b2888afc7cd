# Images of ferrocd (ferrocd + ferrocdutl) and of ferrocd-operator:
#   docker build --target ferrocd -t ghcr.io/ferrocd/ferrocd:0.1.0 .
#   docker build --target operator -t ghcr.io/ferrocd/ferrocd-operator:0.1.0 .
# Not built or run where this project is developed (no container runtime
# there): the test bed maps these image names to the local binaries.
FROM rust:1.89-bookworm AS build
# etcd-client (the operator's etcd v3 client) compiles its protos with protoc.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferrocd -p ferrocd-operator

# The member image: runs as distroless's nonroot user (65532), as the
# operator's member pods expect.
FROM gcr.io/distroless/cc-debian12:nonroot AS ferrocd
COPY --from=build /src/target/release/ferrocd /src/target/release/ferrocdutl /usr/local/bin/
EXPOSE 2379 2380 2381
ENTRYPOINT ["ferrocd"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /src/target/release/ferrocd-operator /usr/local/bin/
EXPOSE 8080
ENTRYPOINT ["ferrocd-operator"]
