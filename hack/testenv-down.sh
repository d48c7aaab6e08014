#!/usr/bin/env bash
# Stop what hack/testenv-up.sh started and remove its data directory and kubeconfig.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" -m tests.support.controlplane down "$@"
