#!/usr/bin/env bash
# The local Kubernetes test bed for a person: a real kube-apiserver (on
# ferrocd), kube-controller-manager and kube-scheduler, a pod network of
# network namespaces, and one node. Needs root.
#   scripts/kube-testbed.sh up     # prints the absolute path of the kubeconfig once the node is Ready
#   scripts/kube-testbed.sh down   # stops everything it started
# State (logs, kubeconfig, PID) lives in .testbed/ (or $TESTBED_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$(realpath -m "${TESTBED_DIR:-.testbed}")
PIDFILE=$DIR/testbed.pid

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
up)
    if running && [ -f "$DIR/ready" ]; then
        echo "$DIR/kubeconfig"
        exit 0
    fi
    scripts/install-test-deps.sh >/dev/null
    scripts/install-kube.sh >/dev/null
    cargo build --locked -q -p ferrocd -p ferrocd-operator -p ferrocd-tests --bins
    mkdir -p "$DIR"
    rm -f "$DIR/ready"
    # setsid: the test bed outlives this script and its terminal.
    setsid target/debug/ferrocd-testbed --dir "$DIR" >"$DIR/testbed.log" 2>&1 < /dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 600); do
        if [ -f "$DIR/ready" ]; then
            echo "$DIR/kubeconfig"
            exit 0
        fi
        if ! running; then
            echo "kube-testbed: the test bed failed to start; its log ($DIR/testbed.log) ends:" >&2
            tail -20 "$DIR/testbed.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "kube-testbed: not ready after 5 minutes; see $DIR/testbed.log (scripts/kube-testbed.sh down stops it)" >&2
    exit 1
    ;;
down)
    if running; then
        pid=$(cat "$PIDFILE")
        kill -TERM "$pid"
        for _ in $(seq 1 120); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            # It leads its own process group (setsid): that takes its children too.
            echo "kube-testbed: $pid did not stop in 60 s; killing its process group" >&2
            kill -KILL -- "-$pid"
        fi
    fi
    rm -f "$PIDFILE" "$DIR/ready"
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
