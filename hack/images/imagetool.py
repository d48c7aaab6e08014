#!/usr/bin/env python3
"""The test node's images: what goes into each (its inputs and their hash), and OCI archives.

One place for both the build (``hack/images-build.sh``) and the tests
(``tests/support/images.py``), so that the test side recomputes exactly the hashes the build
keyed its artefacts by, and a stale image is never used without notice.

    imagetool.py inputs NAME            print "<sha256 of NAME's inputs> <ref>"
    imagetool.py plan                   print "<name> <sha256> <ref> <archive or ->" for every image
    imagetool.py coredns-binary         print the CoreDNS binary's path (fails naming make testenv)
    imagetool.py check-archive X.tar REF  check an OCI archive's blobs and that it names REF
    imagetool.py constraints            print the pip constraints (the host's ``pip freeze``)
    imagetool.py archive-path NAME      print where NAME's archive goes for its current inputs
    imagetool.py oci-archive --out X.tar --ref REF --file /DEST=SRC[:MODE] ... \\
        [--entrypoint ARG ...] [--cmd ARG ...] [--user U] [--env K=V ...] [--workdir DIR] \\
        [--expose PORT/PROTO ...]
                                        write an OCI image layout tar of those files
    imagetool.py write-current          write <images dir>/current.json for the current inputs
                                        (every archive must exist)

Images (the refs are ``localhost/`` so that nothing ever asks a registry for them):

==================  =================================================================  ====================
name                ref                                                                inputs
==================  =================================================================  ====================
pause               localhost/scalable/pause:<hash8>                                   hack/tools/pause, this file
coredns             localhost/scalable/coredns:<COREDNS_VERSION>                       the binary make testenv built, this file
python              localhost/scalable/python:bookworm-<hash8>  (build input only)     hack/images/python-base.sh
operator            localhost/scalable/operator:<hash8>                                Dockerfile + its context, constraints, python's ref
dask                localhost/scalable/dask:<hash8>                                    hack/images/dask.Dockerfile, operator's ref
dask-kubernetes     localhost/scalable/dask-kubernetes-operator:<version>-<hash8>      its Dockerfile, dask's ref
==================  =================================================================  ====================

The Go toolchain that compiles pause and the build script's own flags are not inputs: a
change of those alone keeps the cached artefacts (delete the archive to force a rebuild).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()

#: Images listed in current.json (imported into the node), in build order.
NODE_IMAGES = ("pause", "coredns", "operator", "dask", "dask-kubernetes")
#: Every image this module knows, including build inputs that are not archived.
ALL_IMAGES = ("pause", "coredns", "python", "operator", "dask", "dask-kubernetes")

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"


class InputError(RuntimeError):
    """An input of an image is missing; the message says what builds it."""


# ---------------------------------------------------------------------------------------
# where things are
# ---------------------------------------------------------------------------------------
def testenv_dir() -> Path:
    return Path(os.environ.get("SCALABLE_TESTENV_DIR") or Path.home() / ".cache" / "scalable-testenv")


def images_dir() -> Path:
    return testenv_dir() / "images"


def versions(root: Path = ROOT) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (root / "hack" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def coredns_binary(root: Path = ROOT) -> Path:
    return testenv_dir() / f"coredns-{versions(root)['COREDNS_VERSION']}" / "coredns"


def archive_path(name: str, digest: str) -> Path:
    """The archive of image `name` built from inputs hashing to `digest`."""
    return images_dir() / f"{name}-{digest[:12]}.tar"


# ---------------------------------------------------------------------------------------
# hashing
# ---------------------------------------------------------------------------------------
class _Hasher:
    """sha256 over named parts; each part is framed by its name and length, so moving bytes
    from one part to the next changes the hash."""

    def __init__(self, kind: str) -> None:
        self._h = hashlib.sha256(f"scalable-image:{kind}\n".encode())

    def part(self, name: str, data: bytes) -> None:
        self._h.update(f"{name}\0{len(data)}\0".encode())
        self._h.update(data)

    def file(self, name: str, path: Path) -> None:
        if not path.is_file():
            raise InputError(f"{path} is missing")
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        # The mode matters to COPY (an executable bit); the mtime does not.
        self.part(name, f"{h.hexdigest()} {path.stat().st_mode & 0o777:o}".encode())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _tree(base: Path) -> list[Path]:
    """Files under base as a COPY sees them through .dockerignore: no __pycache__, no .pyc."""
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc")]
    return sorted(out)


@functools.lru_cache(maxsize=4)
def constraints(python: str = sys.executable) -> str:
    """The host's installed distributions as pip constraints: ``pip freeze --exclude-editable``
    without direct references (``name @ file://...``) and options, so that the images install
    exactly the dask, distributed and cloudpickle the host's client runs."""
    out = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        check=True, capture_output=True, text=True,
    ).stdout
    keep = [line.strip() for line in out.splitlines()
            if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+$", line.strip())]
    if not keep:
        raise InputError(f"`{python} -m pip freeze` listed nothing to pin")
    return "".join(f"{line}\n" for line in keep)


def pinned_version(dist: str, python: str = sys.executable) -> str:
    want = re.sub(r"[-_.]+", "-", dist).lower()
    for line in constraints(python).splitlines():
        name, _, version = line.partition("==")
        if re.sub(r"[-_.]+", "-", name).lower() == want:
            return version
    raise InputError(f"{dist} is not installed for {python}; run `make install`")


@functools.lru_cache(maxsize=None)
def _inputs(name: str, root: Path, python: str, coredns: str) -> tuple[str, str]:
    h = _Hasher(name)
    if name == "pause":
        for f in ("main.go", "go.mod"):
            h.file(f, root / "hack" / "tools" / "pause" / f)
        h.file("imagetool.py", HERE)
        d = h.hexdigest()
        return d, f"localhost/scalable/pause:{d[:8]}"
    if name == "coredns":
        version = versions(root)["COREDNS_VERSION"]
        binary = Path(coredns)
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise InputError(f"the CoreDNS binary is missing: expected {binary}; run `make testenv` "
                             "(hack/testenv-build.sh builds it from the Go module proxy)")
        h.part("version", version.encode())
        h.file("coredns", binary)
        h.file("imagetool.py", HERE)
        return h.hexdigest(), f"localhost/scalable/coredns:{version}"
    if name == "python":
        h.file("python-base.sh", root / "hack" / "images" / "python-base.sh")
        d = h.hexdigest()
        return d, f"localhost/scalable/python:bookworm-{d[:8]}"
    if name == "operator":
        # README.md is in the build context too, but only as the package's long description:
        # an edit to it changes nothing the image runs, so it does not make the image stale.
        for f in ("operator/Dockerfile", ".dockerignore", "pyproject.toml"):
            h.file(f, root / f)
        for f in _tree(root / "operator" / "scalable"):
            h.file(f.relative_to(root).as_posix(), f)
        h.part("constraints", constraints(python).encode())
        h.part("base", _inputs("python", root, python, coredns)[1].encode())
        d = h.hexdigest()
        return d, f"localhost/scalable/operator:{d[:8]}"
    if name == "dask":
        h.file("dask.Dockerfile", root / "hack" / "images" / "dask.Dockerfile")
        h.part("base", _inputs("operator", root, python, coredns)[1].encode())
        d = h.hexdigest()
        return d, f"localhost/scalable/dask:{d[:8]}"
    if name == "dask-kubernetes":
        version = pinned_version("dask-kubernetes", python)
        h.file("dask-kubernetes.Dockerfile", root / "hack" / "images" / "dask-kubernetes.Dockerfile")
        h.part("version", version.encode())
        h.part("base", _inputs("dask", root, python, coredns)[1].encode())
        d = h.hexdigest()
        return d, f"localhost/scalable/dask-kubernetes-operator:{version}-{d[:8]}"
    raise KeyError(f"unknown image {name!r}; known: {', '.join(ALL_IMAGES)}")


def inputs(name: str, *, root: Path = ROOT, python: str | None = None) -> tuple[str, str]:
    """(sha256 of image `name`'s inputs, its ref). Raises InputError when an input is missing.

    Cheap: reads the files (the CoreDNS binary is the largest) and runs ``pip freeze`` once.
    """
    return _inputs(name, root, python or sys.executable, str(coredns_binary(root)))


# ---------------------------------------------------------------------------------------
# OCI image layout archives
# ---------------------------------------------------------------------------------------
def go_arch(machine: str | None = None) -> str:
    m = (machine or platform.machine()).lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


def _layer(files: Sequence[tuple[str, Path, int]]) -> bytes:
    """An uncompressed tar of `files` (image path, source, mode), owned by root, mtime 0,
    with the parent directories each path needs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for dest, _, _ in files:
            parts = dest.strip("/").split("/")[:-1]
            dirs |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
        for d in sorted(dirs):
            info = tarfile.TarInfo(d + "/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for dest, src, mode in sorted(files):
            data = src.read_bytes()
            info = tarfile.TarInfo(dest.strip("/"))
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_oci_archive(out: Path, ref: str, files: Sequence[tuple[str, Path, int]], *,
                      entrypoint: Sequence[str] = (), cmd: Sequence[str] = (), user: str = "",
                      env: Sequence[str] = (), workdir: str = "", expose: Sequence[str] = (),
                      arch: str | None = None) -> str:
    """Write an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/*``) as a tar
    at `out`: one gzip layer holding `files`, its config and manifest. The index names the
    image twice: ``org.opencontainers.image.ref.name`` (the tag, as the OCI spec has it) and
    ``io.containerd.image.name`` (the full ref, which ``ctr images import`` names it by).
    Byte-for-byte reproducible for the same files and settings. Returns the manifest digest."""
    if ":" not in ref.rsplit("/", 1)[-1]:
        raise ValueError(f"{ref!r} has no tag")
    arch = arch or go_arch()
    layer = _layer(files)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, filename="") as f:
        f.write(layer)
    layer_gz = gz.getvalue()
    image_config: dict[str, object] = {"Env": list(env) or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if entrypoint:
        image_config["Entrypoint"] = list(entrypoint)
    if cmd:
        image_config["Cmd"] = list(cmd)
    if user:
        image_config["User"] = user
    if workdir:
        image_config["WorkingDir"] = workdir
    if expose:
        image_config["ExposedPorts"] = {p: {} for p in expose}
    config = _canonical({
        "created": "1970-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/images/imagetool.py oci-archive"}],
    })
    manifest = _canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": _digest(layer_gz), "size": len(layer_gz)}],
    })
    index = _canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST, "digest": _digest(manifest), "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {ANNOTATION_REF_NAME: ref.rsplit(":", 1)[1], ANNOTATION_CONTAINERD_NAME: ref},
        }],
    })
    entries = [("oci-layout", _canonical({"imageLayoutVersion": "1.0.0"})), ("index.json", index)]
    entries += sorted((f"blobs/sha256/{_digest(b)[7:]}", b) for b in {config, manifest, layer_gz})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp.{os.getpid()}")
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for d in ("blobs/", "blobs/sha256/"):
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return _digest(manifest)


def read_oci_archive(path: Path) -> dict[str, object]:
    """The index, manifests and configs of an OCI archive, each blob checked against its
    digest and size (ValueError otherwise): {"index": ..., "images": [{"ref", "manifest",
    "config"}]}."""
    with tarfile.open(path) as tar:
        def blob(desc: dict) -> bytes:
            algo, _, hexd = desc["digest"].partition(":")
            member = tar.extractfile(f"blobs/{algo}/{hexd}")
            if member is None:
                raise ValueError(f"{path}: blob {desc['digest']} is missing")
            data = member.read()
            if _digest(data) != desc["digest"] or len(data) != desc["size"]:
                raise ValueError(f"{path}: blob {desc['digest']} does not match its descriptor")
            return data

        layout = json.loads(tar.extractfile("oci-layout").read())
        if layout.get("imageLayoutVersion") != "1.0.0":
            raise ValueError(f"{path}: not an OCI image layout")
        index = json.loads(tar.extractfile("index.json").read())
        images = []
        for desc in index["manifests"]:
            manifest = json.loads(blob(desc))
            config = json.loads(blob(manifest["config"]))
            for layer in manifest["layers"]:
                blob(layer)
            ann = desc.get("annotations", {})
            images.append({"ref": ann.get(ANNOTATION_CONTAINERD_NAME) or ann.get(ANNOTATION_REF_NAME),
                           "manifest": manifest, "config": config})
    return {"index": index, "images": images}


# ---------------------------------------------------------------------------------------
# current.json
# ---------------------------------------------------------------------------------------
def current_file() -> Path:
    return images_dir() / "current.json"


def write_current(names: Iterable[str] = NODE_IMAGES, *, python: str | None = None) -> Path:
    """current.json for the images' current inputs: {name: {ref, archive, inputs, bytes}}."""
    out: dict[str, dict[str, object]] = {}
    for name in names:
        digest, ref = inputs(name, python=python)
        archive = archive_path(name, digest)
        if not archive.is_file():
            raise InputError(f"{name}: {archive} is missing; run hack/images-build.sh")
        out[name] = {"ref": ref, "archive": str(archive.resolve()), "inputs": digest,
                     "bytes": archive.stat().st_size}
    path = current_file()
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------
def _parse_file(spec: str) -> tuple[str, Path, int]:
    dest, sep, src = spec.partition("=")
    if not sep or not dest.startswith("/"):
        raise argparse.ArgumentTypeError(f"--file wants /DEST=SRC[:MODE], got {spec!r}")
    mode = 0o755
    if re.search(r":[0-7]{3,4}$", src):
        src, _, m = src.rpartition(":")
        mode = int(m, 8)
    return dest, Path(src), mode


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="imagetool.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("inputs")
    s.add_argument("name", choices=ALL_IMAGES)
    sub.add_parser("constraints")
    s = sub.add_parser("archive-path")
    s.add_argument("name", choices=NODE_IMAGES)
    s = sub.add_parser("oci-archive")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--ref", required=True)
    s.add_argument("--file", dest="files", type=_parse_file, action="append", required=True)
    s.add_argument("--entrypoint", action="append", default=[])
    s.add_argument("--cmd", dest="cmd_args", action="append", default=[])
    s.add_argument("--user", default="")
    s.add_argument("--env", action="append", default=[])
    s.add_argument("--workdir", default="")
    s.add_argument("--expose", action="append", default=[])
    sub.add_parser("write-current")
    sub.add_parser("plan")
    sub.add_parser("coredns-binary")
    s = sub.add_parser("check-archive")
    s.add_argument("archive", type=Path)
    s.add_argument("ref")
    a = p.parse_args(argv)
    try:
        if a.command == "inputs":
            print(*inputs(a.name))
        elif a.command == "constraints":
            sys.stdout.write(constraints())
        elif a.command == "archive-path":
            print(archive_path(a.name, inputs(a.name)[0]))
        elif a.command == "oci-archive":
            print(write_oci_archive(a.out, a.ref, a.files, entrypoint=a.entrypoint, cmd=a.cmd_args,
                                    user=a.user, env=a.env, workdir=a.workdir, expose=a.expose))
        elif a.command == "write-current":
            print(write_current())
        elif a.command == "plan":
            for name in ALL_IMAGES:
                digest, ref = inputs(name)
                print(name, digest, ref, archive_path(name, digest) if name in NODE_IMAGES else "-")
        elif a.command == "coredns-binary":
            inputs("coredns")  # fails with the make testenv hint when it is missing
            print(coredns_binary())
        elif a.command == "check-archive":
            refs = [img["ref"] for img in read_oci_archive(a.archive)["images"]]
            if refs != [a.ref]:
                print(f"imagetool: {a.archive} names {refs}, not [{a.ref!r}]", file=sys.stderr)
                return 1
    except InputError as e:
        print(f"imagetool: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
