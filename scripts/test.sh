#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain:
# installs what the tests need (etcdctl 3.4, etcd/etcdctl/etcdutl 3.5.1),
# builds the server, then runs every unit and multi-process test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
# The multi-process tests start the real `ferrocd` binary.
cargo build --locked -p ferrocd
cargo test --locked --workspace -- --test-threads="${TEST_THREADS:-2}"
