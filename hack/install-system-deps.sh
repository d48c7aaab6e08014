#!/usr/bin/env bash
# System packages the test tiers need, from Debian: prometheus (the e2e tier scrapes a real
# Dask scheduler with it); buildah and debootstrap (hack/images-build.sh builds the test
# node's images with them), containerd, runc, the CNI plugins, iptables, iproute2 and conntrack
# (the real node of tests/support/node.py, and `hack/images-build.sh verify`).
# Idempotent and quick when everything is already there; never fails because apt has already
# run. Runs as root (CI and the dev machines) or via sudo.
set -euo pipefail

log() { printf '[install-system-deps] %s\n' "$*" >&2; }

# command -> Debian package
declare -A NEED=([prometheus]=prometheus [openssl]=openssl
                 [buildah]=buildah [debootstrap]=debootstrap [containerd]=containerd [ctr]=containerd [runc]=runc
                 [containerd-shim-runc-v2]=containerd [iptables]=iptables [iptables-save]=iptables
                 [ip]=iproute2 [conntrack]=conntrack [/usr/lib/cni/bridge]=containernetworking-plugins)
# debootstrap and runc live in /usr/sbin, which a non-root PATH may lack.
have() { [[ $1 == /* ]] && { [[ -x $1 ]]; return; }; command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }
missing=()
for cmd in "${!NEED[@]}"; do
  have "$cmd" || [[ " ${missing[*]} " == *" ${NEED[$cmd]} "* ]] || missing+=("${NEED[$cmd]}")
done
if ((${#missing[@]} == 0)); then
  log "already installed: ${!NEED[*]}"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { log "ERROR: need root (or sudo) to apt-get install ${missing[*]}"; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# The package's maintainer scripts would start a system-wide Prometheus on :9090; the tests
# start their own on free loopback ports, so keep services from starting during the install.
policy=/usr/sbin/policy-rc.d
added_policy=""
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  added_policy=1
fi
cleanup() { [[ -n $added_policy ]] && $SUDO rm -f "$policy"; true; }
trap cleanup EXIT

log "installing ${missing[*]}"
# One update, then the install; if the install fails on stale lists, update again once.
$SUDO apt-get update -qq || log "apt-get update failed; trying the install with the lists we have"
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for cmd in "${!NEED[@]}"; do
  have "$cmd" || { log "ERROR: $cmd still missing after installing ${NEED[$cmd]}"; exit 1; }
done
log "installed: $(prometheus --version 2>&1 | head -1)"
