# The Python base image of the test node's images, from Debian's packages (no registry):
# sourced by hack/images-build.sh. Everything that decides the base's contents is in this
# file, and its hash is the image's tag (hack/images/imagetool.py, "python"): change a
# package here and the rootfs, the base and every image built on it are rebuilt.
#
# Not imported into the node; operator/Dockerfile builds on it (PYTHON_IMAGE build-arg), so it
# needs `python` (the Dockerfile runs `python -m venv`), the venv module, groupadd/useradd
# (passwd, in minbase), and CA certificates for pip.
# shellcheck shell=bash

PYTHON_BASE_SUITE=bookworm
PYTHON_BASE_MIRROR=http://deb.debian.org/debian
PYTHON_BASE_VARIANT=minbase
PYTHON_BASE_PACKAGES=(python3 python3-venv ca-certificates tini)
PYTHON_BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# python_base_rootfs OUT.tar WORKDIR: debootstrap the rootfs into WORKDIR/rootfs and tar it.
python_base_rootfs() {
  local out="$1" work="$2" dir
  dir="$work/rootfs"
  mkdir -p "$work/debs"
  # debootstrap mounts /proc and /sys inside the target while it configures packages; if it
  # fails half-way they stay mounted, and the caller's cleanup unmounts what is under $work.
  debootstrap --variant="$PYTHON_BASE_VARIANT" --components=main --merged-usr \
    --cache-dir="$work/debs" --include="$(IFS=,; echo "${PYTHON_BASE_PACKAGES[*]}")" \
    "$PYTHON_BASE_SUITE" "$dir" "$PYTHON_BASE_MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; [[ -f $dir/debootstrap/debootstrap.log ]] && tail -n 30 "$dir/debootstrap/debootstrap.log" >&2; return 1; }
  # operator/Dockerfile (like the python:3.11 images) calls `python`.
  ln -sfn python3 "$dir/usr/bin/python"
  # What debootstrap copied from the build machine, or left for apt, does not belong in an
  # image: the host's resolver and name (the runtime mounts its own), apt's lists and
  # caches, logs.
  : >"$dir/etc/resolv.conf"
  : >"$dir/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$dir/etc/hosts"
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/var/cache/debconf/*-old \
         "$dir"/var/log/* "$dir"/tmp/* "$dir"/var/tmp/* "$dir"/root/.[!.]* 2>/dev/null || true
  mkdir -p "$dir/var/lib/apt/lists/partial" "$dir/var/cache/apt/archives/partial"
  # Checks that the rootfs has what the images need.
  local f
  for f in usr/bin/python3 usr/bin/python usr/bin/tini usr/sbin/useradd usr/sbin/groupadd \
           etc/ssl/certs/ca-certificates.crt; do
    [[ -e "$dir/$f" ]] || { echo "python base: /$f is missing from the rootfs" >&2; return 1; }
  done
  chroot "$dir" python -c 'import venv, ensurepip, ssl' \
    || { echo "python base: python3 in the rootfs cannot import venv/ensurepip/ssl" >&2; return 1; }
  tar --numeric-owner --xattrs --sort=name -C "$dir" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$dir"
}

# python_base_image ROOTFS.tar REF: the rootfs as a one-layer buildah image named REF
# ("${BUILDAH[@]}" is the caller's buildah with its storage flags).
python_base_image() {
  local rootfs="$1" ref="$2" ctr
  ctr="$("${BUILDAH[@]}" from --name "scalable-python-base-$$" scratch)"
  # A local tar given to `buildah add` is extracted as it is (owners and modes kept).
  if ! { "${BUILDAH[@]}" add "$ctr" "$rootfs" / >/dev/null \
         && "${BUILDAH[@]}" config --os linux --arch "$(dpkg --print-architecture)" \
              --env "PATH=$PYTHON_BASE_PATH" --env LANG=C.UTF-8 \
              --cmd '["python3"]' --workingdir / \
              --label "org.opencontainers.image.description=Debian $PYTHON_BASE_SUITE ($PYTHON_BASE_VARIANT) with ${PYTHON_BASE_PACKAGES[*]}" \
              "$ctr" \
         && "${BUILDAH[@]}" commit --quiet "$ctr" "$ref" >/dev/null; }; then
    "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
    return 1
  fi
  "${BUILDAH[@]}" rm "$ctr" >/dev/null
}
