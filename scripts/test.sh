#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain:
# installs what the tests need (protoc, etcdctl 3.4, etcd/etcdctl/etcdutl 3.5.1,
# kubernetes-validate; kube-apiserver and friends 1.20.2 built once from Debian's
# source package and kept under .tools/, kubectl and helm), builds the server and
# the operator, then runs every unit, multi-process and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
scripts/install-kube.sh
# The multi-process tests start the real `ferrocd` binary; the test bed's pods run
# ferrocd, ferrocdutl and ferrocd-operator.
cargo build --locked -p ferrocd -p ferrocd-operator
# nextest (on the machines this suite targets) runs every test in a process
# of its own, two at a time across all test binaries, the slowest first
# (.config/nextest.toml); cargo's own runner is the fallback.
# (Test priorities need nextest 0.9.91 or later.)
nextest=$(cargo nextest --version 2>/dev/null | awk 'NR == 1 { print $2 }' || true)
if [ -n "$nextest" ] && [ "$(printf '0.9.91\n%s\n' "$nextest" | sort -V | head -n1)" = "0.9.91" ]; then
    exec cargo nextest run --locked --workspace --all-targets --no-fail-fast --test-threads="${TEST_THREADS:-2}"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --workspace --all-targets --no-fail-fast -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "suite: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
