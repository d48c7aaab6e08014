#!/usr/bin/env bash
# Start the local control plane (etcd, kube-apiserver with RBAC, kube-controller-manager) and
# one real node (containerd, kubelet, kube-proxy, CoreDNS; tests/support/node.py); return when
# the node is Ready and CoreDNS answers. Prints `export KUBECONFIG=...` on stdout, so
#   eval "$(hack/testenv-up.sh)"
# points kubectl at it. The logic lives in tests/support/controlplane.py (also used by pytest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" -m tests.support.controlplane up --node "$@"
