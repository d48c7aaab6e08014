#!/usr/bin/env bash
# Build (or reuse) every container image the test node runs, locally, with no registry, as
# OCI archives outside the repository (what `make images` runs):
#
#   pause            localhost/scalable/pause:<hash8>            hack/tools/pause (Go, static)
#   coredns          localhost/scalable/coredns:<COREDNS_VERSION>  the binary `make testenv` built
#   python (input)   localhost/scalable/python:bookworm-<hash8>  debootstrap, hack/images/python-base.sh
#   operator         localhost/scalable/operator:<hash8>         operator/Dockerfile, pinned to the host's pip freeze
#   dask             localhost/scalable/dask:<hash8>             hack/images/dask.Dockerfile
#   dask-kubernetes  localhost/scalable/dask-kubernetes-operator:<version>-<hash8>
#
#   hack/images-build.sh           build what is missing; write current.json
#   hack/images-build.sh verify    import every archive into a throwaway containerd and run
#                                  each image once (read-only root, the users the charts use)
#   hack/images-build.sh path      print the images directory
#
# Every artefact is keyed by a hash of its inputs (hack/images/imagetool.py says which), so a
# rerun with unchanged inputs does nothing. Output, under $SCALABLE_TESTENV_DIR (default
# ~/.cache/scalable-testenv):
#   images/<name>-<hash12>.tar     one OCI archive per node image
#   images/current.json            {"<name>": {"ref", "archive", "inputs", "bytes"}}
#   images/python-rootfs-<hash12>.tar   the debootstrap rootfs (keyed by its package list and recipe)
#   images/work/                   build logs, debootstrap's downloaded .debs
#   containers/storage             buildah's image store (runroot /run/scalable-buildah)
# Import an archive into the node's containerd:
#   ctr --address <sock> -n k8s.io images import <archive>    (names it by the full ref)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=versions.env
source hack/versions.env

TESTENV_DIR="${SCALABLE_TESTENV_DIR:-$HOME/.cache/scalable-testenv}"
export SCALABLE_TESTENV_DIR="$TESTENV_DIR"
IMAGES_DIR="$TESTENV_DIR/images"
STORAGE_ROOT="$TESTENV_DIR/containers/storage"
RUNROOT="${SCALABLE_BUILDAH_RUNROOT:-/run/scalable-buildah}"
# chroot: RUN steps share the host's network (pip reaches PyPI as the host does) and need no
# network setup or nested runtime; set BUILDAH_ISOLATION=oci to use runc instead.
ISOLATION="${BUILDAH_ISOLATION:-chroot}"
# The trust store the RUN steps see while they download: the host's, so a TLS-intercepting
# proxy that the host trusts works inside the build too. Bind-mounted only during RUN, never
# committed into an image.
CA_BUNDLE="${SCALABLE_IMAGES_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
PYTHON="${PYTHON:-python3}"
TOOL=("$PYTHON" "$ROOT/hack/images/imagetool.py")
PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
export GOTOOLCHAIN="${GO_TOOLCHAIN:-local}" CGO_ENABLED=0

START=$SECONDS
log() { printf '[images-build %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf '[images-build %s] ERROR: %s\n' "$(date +%T)" "$*" >&2; exit 1; }

need() {  # need CMD DEBIAN-PACKAGE [WHY]
  command -v "$1" >/dev/null 2>&1 && return
  die "$1 is not on PATH${3:+ ($3)}: run hack/install-system-deps.sh, or apt-get install $2"
}

# ---------------------------------------------------------------------------------------
# buildah, with its store in the cache
# ---------------------------------------------------------------------------------------
storage_driver() {
  # The store keeps the driver it was created with; a new one uses overlay when the kernel
  # has it (as root on ext4/xfs), else vfs (slower and larger, but works anywhere).
  local f="$TESTENV_DIR/containers/driver"
  if [[ ! -s $f ]]; then
    mkdir -p "$TESTENV_DIR/containers"
    if grep -qw overlay /proc/filesystems; then echo overlay >"$f"; else echo vfs >"$f"; fi
  fi
  cat "$f"
}

init_buildah() {
  need buildah buildah "builds the operator, dask and dask-kubernetes images"
  [[ $(id -u) -eq 0 ]] || die "buildah runs as root here (no rootless setup): run as root or with sudo"
  local driver; driver="$(storage_driver)"
  BUILDAH=(buildah --root "$STORAGE_ROOT" --runroot "$RUNROOT" --storage-driver "$driver")
  if [[ -z ${BUILDAH_CHECKED:-} ]]; then
    "${BUILDAH[@]}" info >/dev/null 2>"$IMAGES_DIR/work/buildah-info.err" \
      || die "buildah cannot open its store $STORAGE_ROOT with the $driver driver: $(tail -n 3 "$IMAGES_DIR/work/buildah-info.err")"
    BUILDAH_CHECKED=1
  fi
}

have_image() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------
# the plan: every image's input hash, ref and archive (imagetool.py computes them)
# ---------------------------------------------------------------------------------------
declare -A DIGEST REF ARCHIVE STATUS SECS
BUD_VOLUMES=()
plan() {
  local out name digest ref archive
  out="$("${TOOL[@]}" plan)" || die "could not compute the images' inputs (above)"
  while read -r name digest ref archive; do
    DIGEST[$name]=$digest; REF[$name]=$ref; ARCHIVE[$name]=${archive#-}
  done <<<"$out"
}

# ---------------------------------------------------------------------------------------
# pause and coredns: one static binary each, written as OCI archives by imagetool.py
# ---------------------------------------------------------------------------------------
build_pause() {
  local t0=$SECONDS bin="$IMAGES_DIR/work/pause-${DIGEST[pause]:0:12}"
  command -v go >/dev/null || die "go is not on PATH (builds the pause program): install Go >= $GO_MIN_VERSION from go.dev (Debian's golang-go is too old); /usr/local/go/bin is searched too"
  log "pause: go build hack/tools/pause"
  mkdir -p "$bin"
  (cd hack/tools/pause && nice -n 10 go build -mod=readonly -trimpath \
     -ldflags "-s -w -buildid= -X main.version=${DIGEST[pause]:0:8}" -o "$bin/pause" .) \
    || die "go build of hack/tools/pause failed (above)"
  "${TOOL[@]}" oci-archive --out "${ARCHIVE[pause]}" --ref "${REF[pause]}" \
    --file "/pause=$bin/pause:0755" --entrypoint /pause --user 65535:65535 >/dev/null
  rm -rf "$bin"
  SECS[pause]=$((SECONDS - t0))
}

build_coredns() {
  local t0=$SECONDS bin
  bin="$("${TOOL[@]}" coredns-binary)" || die "no CoreDNS binary (above)"
  log "coredns: packing $bin"
  "${TOOL[@]}" oci-archive --out "${ARCHIVE[coredns]}" --ref "${REF[coredns]}" \
    --file "/coredns=$bin:0755" --entrypoint /coredns --user 65532:65532 \
    --expose 53/udp --expose 53/tcp --expose 9153/tcp >/dev/null
  SECS[coredns]=$((SECONDS - t0))
}

# ---------------------------------------------------------------------------------------
# the Python base: a debootstrap rootfs (cached, see rootfs_key), one buildah image
# ---------------------------------------------------------------------------------------
# shellcheck source=images/python-base.sh
source hack/images/python-base.sh

unmount_under() {  # unmount whatever is mounted below $1 (deepest first)
  local m
  while read -r m; do umount -l "$m" 2>/dev/null || true; done \
    < <(awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r)
}

# The rootfs is keyed by what decides its contents only: the suite, mirror, variant, package
# list and the rootfs recipe (bash's normalized text of it, so comments do not count); a
# change to the image config alone reuses it.
rootfs_key() {
  { declare -p PYTHON_BASE_SUITE PYTHON_BASE_MIRROR PYTHON_BASE_VARIANT PYTHON_BASE_PACKAGES
    declare -f python_base_rootfs; } | sha256sum | cut -c1-12
}

ensure_python_base() {
  have_image "${REF[python]}" && return
  local rootfs="$IMAGES_DIR/python-rootfs-$(rootfs_key).tar" work="$IMAGES_DIR/work/python-base" t0
  if [[ ! -f $rootfs ]]; then
    need debootstrap debootstrap "builds the Python base from Debian's packages"
    need chroot coreutils
    t0=$SECONDS
    log "python: debootstrap --variant=$PYTHON_BASE_VARIANT $PYTHON_BASE_SUITE from $PYTHON_BASE_MIRROR with ${PYTHON_BASE_PACKAGES[*]} (a few minutes)"
    unmount_under "$work"; rm -rf "$work/rootfs"; mkdir -p "$work"
    # shellcheck disable=SC2064
    trap "unmount_under '$work'" EXIT
    python_base_rootfs "$rootfs" "$work" || { unmount_under "$work"; die "debootstrap of the Python base failed (log: $work/debootstrap.log)"; }
    trap - EXIT
    SECS[debootstrap]=$((SECONDS - t0))
    log "python: rootfs $(du -h "$rootfs" | cut -f1) in ${SECS[debootstrap]} s"
  else
    log "python: rootfs cached in $rootfs"
  fi
  t0=$SECONDS
  python_base_image "$rootfs" "${REF[python]}" || die "buildah could not make ${REF[python]} from $rootfs"
  SECS[python]=$((SECONDS - t0))
  log "python: ${REF[python]} in ${SECS[python]} s"
}

# ---------------------------------------------------------------------------------------
# operator, dask, dask-kubernetes: buildah bud, then buildah push to an OCI archive
# ---------------------------------------------------------------------------------------
# Puts NAME's image into buildah's store: built, or read back from its archive.
ensure_stored() {
  local name="$1" id
  have_image "${REF[$name]}" && return
  if [[ -f ${ARCHIVE[$name]} ]]; then
    log "$name: reading ${REF[$name]} back from ${ARCHIVE[$name]} into buildah's store"
    id="$("${BUILDAH[@]}" pull --quiet "oci-archive:${ARCHIVE[$name]}")" || die "buildah could not read ${ARCHIVE[$name]}"
    "${BUILDAH[@]}" tag "$id" "${REF[$name]}"
    return
  fi
  build_image "$name"
}

bud() {  # bud NAME DOCKERFILE CONTEXT BUILD-ARG...
  local name="$1" file="$2" context="$3"; shift 3
  local args=() a vols=("${BUD_VOLUMES[@]}")
  for a in "$@"; do args+=(--build-arg "$a"); done
  [[ -f $CA_BUNDLE ]] && vols+=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
  log "$name: buildah bud -f ${file#"$ROOT"/} ($ISOLATION isolation) -> ${REF[$name]}"
  # --force-rm: a failed build leaves no container (nor its mount) behind.
  nice -n 5 "${BUILDAH[@]}" bud --pull=never --isolation "$ISOLATION" --format oci \
    --layers=false --force-rm "${vols[@]}" "${args[@]}" -f "$file" -t "${REF[$name]}" "$context" \
    >"$IMAGES_DIR/work/$name.build.log" 2>&1 \
    || { tail -n 40 "$IMAGES_DIR/work/$name.build.log" >&2; die "$name: buildah bud failed (whole log: $IMAGES_DIR/work/$name.build.log)"; }
}

build_image() {
  local name="$1" t0=$SECONDS constraints
  case "$name" in
    operator)
      ensure_python_base
      t0=$SECONDS
      # The constraints reach the build stage through a read-only bind mount over /mnt (an
      # empty directory in Debian images), so nothing of them lands in a layer.
      constraints="$IMAGES_DIR/work/operator-inputs"
      mkdir -p "$constraints"
      "${TOOL[@]}" constraints >"$constraints/constraints.txt"
      BUD_VOLUMES=(-v "$constraints:/mnt:ro")
      bud operator "$ROOT/operator/Dockerfile" "$ROOT" \
        "PYTHON_IMAGE=${REF[python]}" "PIP_CONSTRAINT=/mnt/constraints.txt"
      BUD_VOLUMES=()
      ;;
    dask)
      ensure_stored operator
      t0=$SECONDS
      bud dask "$ROOT/hack/images/dask.Dockerfile" "$IMAGES_DIR/work/empty-context" "OPERATOR_IMAGE=${REF[operator]}"
      ;;
    dask-kubernetes)
      ensure_stored dask
      t0=$SECONDS
      bud dask-kubernetes "$ROOT/hack/images/dask-kubernetes.Dockerfile" "$IMAGES_DIR/work/empty-context" "DASK_IMAGE=${REF[dask]}"
      ;;
    *) die "build_image: unknown image $name" ;;
  esac
  SECS[$name.build]=$((SECONDS - t0))
  log "$name: built in ${SECS[$name.build]} s"
}

export_archive() {
  local name="$1" t0=$SECONDS tmp="${ARCHIVE[$name]}.tmp.$$"
  rm -f "$tmp"
  log "$name: buildah push ${REF[$name]} oci-archive:${ARCHIVE[$name]}"
  "${BUILDAH[@]}" push --quiet "${REF[$name]}" "oci-archive:$tmp:${REF[$name]}" >/dev/null \
    || { rm -f "$tmp"; die "$name: buildah push to $tmp failed"; }
  # The archive must name the image by its full ref, or `ctr images import` would not.
  "${TOOL[@]}" check-archive "$tmp" "${REF[$name]}" || { rm -f "$tmp"; die "$name: $tmp does not name ${REF[$name]}"; }
  mv "$tmp" "${ARCHIVE[$name]}"
  SECS[$name.push]=$((SECONDS - t0))
  log "$name: archive $(du -h "${ARCHIVE[$name]}" | cut -f1) in ${SECS[$name.push]} s"
}

buildah_image() {  # the archive of NAME, built if its inputs changed
  local name="$1"
  if [[ -f ${ARCHIVE[$name]} ]]; then STATUS[$name]=cached; return; fi
  init_buildah
  STATUS[$name]=built
  have_image "${REF[$name]}" || build_image "$name"
  export_archive "$name"
}

# ---------------------------------------------------------------------------------------
# housekeeping and summary
# ---------------------------------------------------------------------------------------
prune() {
  local name f keep
  for name in pause coredns operator dask dask-kubernetes; do
    for f in "$IMAGES_DIR/$name"-*.tar; do
      [[ -e $f && $f != "${ARCHIVE[$name]}" ]] || continue
      [[ $(basename "$f") =~ ^$name-[0-9a-f]{12}\.tar$ ]] || continue  # dask-* must not match dask-kubernetes-*
      log "removing the superseded $f"; rm -f "$f"
    done
  done
  for f in "$IMAGES_DIR"/python-rootfs-*.tar; do
    [[ -e $f && $f != "$IMAGES_DIR/python-rootfs-$(rootfs_key).tar" ]] || continue
    log "removing the superseded $f"; rm -f "$f"
  done
  [[ ${#BUILDAH[@]} -gt 0 ]] || return 0
  # Older tags of our repositories in buildah's store, then what they leave dangling.
  keep=" ${REF[python]} ${REF[operator]} ${REF[dask]} ${REF[dask-kubernetes]} "
  while read -r f; do
    [[ $f == localhost/scalable/* && $keep != *" $f "* ]] || continue
    "${BUILDAH[@]}" rmi "$f" >/dev/null 2>&1 && log "removed the superseded image $f from buildah's store"
  done < <("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' 2>/dev/null)
  "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
}

summary() {
  local name size secs
  log "summary:"
  for name in pause coredns python operator dask dask-kubernetes; do
    if [[ $name == python ]]; then
      secs=$(( ${SECS[debootstrap]:-0} + ${SECS[python]:-0} ))
      printf '  %-16s %-62s %8s  %s\n' "$name" "${REF[$name]}" "-" \
        "$( ((secs)) && echo "built in ${secs} s (debootstrap ${SECS[debootstrap]:-0} s)" || echo "cached or not needed")" >&2
      continue
    fi
    size="$(du -h "${ARCHIVE[$name]}" | cut -f1)"
    secs=$(( ${SECS[$name]:-0} + ${SECS[$name.build]:-0} + ${SECS[$name.push]:-0} ))
    printf '  %-16s %-62s %8s  %s\n' "$name" "${REF[$name]}" "$size" \
      "$([[ ${STATUS[$name]} == built ]] && echo "built in ${secs} s" || echo cached)" >&2
  done
  log "archives in $IMAGES_DIR; list: $IMAGES_DIR/current.json"
}

do_build() {
  need "$PYTHON" python3
  mkdir -p "$IMAGES_DIR/work/empty-context"
  BUILDAH=()
  plan
  if [[ -f ${ARCHIVE[pause]} ]]; then STATUS[pause]=cached; else STATUS[pause]=built; build_pause; fi
  if [[ -f ${ARCHIVE[coredns]} ]]; then STATUS[coredns]=cached; else STATUS[coredns]=built; build_coredns; fi
  buildah_image operator
  buildah_image dask
  buildah_image dask-kubernetes
  "${TOOL[@]}" write-current >/dev/null
  prune
  summary
  log "done in $((SECONDS - START)) s"
}

# ---------------------------------------------------------------------------------------
# verify: a throwaway containerd imports every archive and runs each image once
# ---------------------------------------------------------------------------------------
V_DIR="" V_SOCK="" V_PID="" V_RUN_EXISTED=""
verify_cleanup() {
  local c ctr=(ctr --address "$V_SOCK" -n k8s.io)
  if [[ -n $V_PID ]]; then
    for c in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
    for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
      "${ctr[@]}" tasks delete -f "$c" >/dev/null 2>&1 || true
      "${ctr[@]}" containers delete "$c" >/dev/null 2>&1 || true
    done
    kill "$V_PID" 2>/dev/null || true
    wait "$V_PID" 2>/dev/null || true
  fi
  if [[ -n $V_DIR ]]; then unmount_under "$V_DIR"; rm -rf "$V_DIR"; fi
  # containerd 1.6 puts shim sockets under /run/containerd/s whatever its --state. If this
  # run created that directory and no other containerd is running, remove what is left empty
  # (never anything another containerd may be using).
  if [[ -z $V_RUN_EXISTED ]] && ! pgrep -x containerd >/dev/null; then
    rmdir /run/containerd/s /run/containerd/fifo /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd 2>/dev/null || true
  fi
}

do_verify() {
  need containerd containerd "verify imports the archives into a throwaway containerd"
  need ctr containerd
  need runc runc
  [[ -f $IMAGES_DIR/current.json ]] || die "$IMAGES_DIR/current.json is missing: run hack/images-build.sh first"
  local name ref archive listed i
  [[ -d /run/containerd ]] && V_RUN_EXISTED=1
  V_DIR="$(mktemp -d /tmp/scalable-images-verify.XXXXXX)"
  V_SOCK="$V_DIR/containerd.sock"
  trap verify_cleanup EXIT
  printf '%s\n' 'version = 2' "root = \"$V_DIR/root\"" "state = \"$V_DIR/state\"" \
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]' \
    '[grpc]' "  address = \"$V_SOCK\"" '[ttrpc]' "  address = \"$V_SOCK.ttrpc\"" \
    '[plugins."io.containerd.internal.v1.opt"]' "  path = \"$V_DIR/opt\"" >"$V_DIR/config.toml"
  containerd --config "$V_DIR/config.toml" >"$V_DIR/containerd.log" 2>&1 &
  V_PID=$!
  for i in $(seq 50); do ctr --address "$V_SOCK" version >/dev/null 2>&1 && break; sleep 0.2; done
  local CTR=(ctr --address "$V_SOCK" -n k8s.io)
  declare -A R
  while read -r name ref archive; do
    R[$name]=$ref
    log "verify: ctr -n k8s.io images import $archive"
    "${CTR[@]}" images import "$archive" >"$V_DIR/import.log" 2>&1 || { cat "$V_DIR/import.log" >&2; die "ctr images import $archive failed"; }
    listed="$("${CTR[@]}" images ls -q)"
    grep -qxF "$ref" <<<"$listed" || die "after importing $archive, ctr images ls does not show $ref: $(cat "$V_DIR/import.log")"
    log "verify: $ref imported"
  done < <("$PYTHON" -c 'import json,sys; [print(k, v["ref"], v["archive"]) for k, v in json.load(open(sys.argv[1])).items()]' "$IMAGES_DIR/current.json")
  # As the charts run them: a read-only root; /tmp a fresh tmpfs for ours (the chart's
  # emptyDir), none for dask-kubernetes' controller (its chart mounts nothing). runc's state
  # and the IO fifos stay in the throwaway directory.
  local TMPFS=(--mount "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev:mode=1777")
  run() {  # run LABEL CTR-RUN-ARGS...: output indented, ctr's exit status
    local label="$1"; shift
    "${CTR[@]}" run --rm --net-host --read-only --runc-root "$V_DIR/runc" --fifo-dir "$V_DIR/fifo" "$@" 2>&1 \
      | sed "s/^/    $label| /" >&2
    return "${PIPESTATUS[0]}"
  }
  run pause "${R[pause]}" v-pause /pause -v || die "pause -v failed"
  (sleep 2; "${CTR[@]}" tasks kill -s SIGTERM v-pause-term >/dev/null 2>&1) &
  run pause "${R[pause]}" v-pause-term || die "pause did not exit 0 on SIGTERM"
  wait $!
  log "verify: pause (its own entry point, uid 65535) exited 0 on SIGTERM"
  run coredns "${R[coredns]}" v-coredns /coredns -version || die "coredns -version failed"
  run operator "${TMPFS[@]}" "${R[operator]}" v-operator sh -c 'echo "uid $(id -u)"; scalable --help >/dev/null && echo "scalable --help: ok"' \
    || die "the operator image does not run scalable --help on a read-only root"
  run dask "${TMPFS[@]}" "${R[dask]}" v-dask python -c '
import asyncio, logging, os, urllib.request
import distributed, prometheus_client
from distributed import Scheduler
from scalable.telemetry.dask_plugin import TelemetrySchedulerPlugin
logging.getLogger("distributed").setLevel(logging.WARNING)
async def main():
    async with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0") as s:
        s.add_plugin(TelemetrySchedulerPlugin())
        url = f"http://127.0.0.1:{s.http_server.port}/metrics"
        text = (await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())).decode()
        assert "dask_scheduler_workers" in text, text[:400]
asyncio.run(main())
print("uid", os.getuid(), "HOME", os.environ["HOME"], "distributed", distributed.__version__,
      "- a scheduler with the telemetry plugin served /metrics")
' || die "the dask image cannot run a scheduler with the telemetry plugin on a read-only root"
  run dask-kubernetes "${R[dask-kubernetes]}" v-dk python -c '
import getpass, os, dask_kubernetes, kopf
import dask_kubernetes.operator.controller
print("uid", os.getuid(), "user", getpass.getuser(), "dask_kubernetes", dask_kubernetes.__version__)
' || die "the dask-kubernetes image cannot import its controller as uid 1000 on a read-only root"
  run dask-kubernetes "${R[dask-kubernetes]}" v-dk-help kopf run --help >/dev/null 2>&1 \
    || die "kopf run --help failed in the dask-kubernetes image"
  log "verify: every image imports and runs ($((SECONDS - START)) s)"
}

case "${1:-build}" in
  build) do_build ;;
  verify) do_verify ;;
  path) echo "$IMAGES_DIR" ;;
  *) die "unknown command '$1' (build | verify | path)" ;;
esac
