"""The test node's images without building them: the OCI archive writer of
hack/images/imagetool.py (pause and CoreDNS) and tests/support/images.py's reading of
current.json, which must name `make images` whenever an image is missing or stale."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support import images
from tests.support.testenv import MissingBinaryError

imagetool = images.imagetool


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _blob(members: dict[str, bytes], digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    return members[f"blobs/{algo}/{hexd}"]


def _write(tmp_path: Path, name: str = "img.tar", ref: str = "localhost/scalable/test:abc123", **kw) -> Path:
    binary = tmp_path / "prog"
    binary.write_bytes(b"\x7fELF not really a program\n" * 100)
    out = tmp_path / name
    imagetool.write_oci_archive(out, ref, [("/prog", binary, 0o755)], entrypoint=["/prog"],
                                user="65535:65535", **kw)
    return out


def test_oci_archive_digests_match_the_blobs_and_name_the_full_ref(tmp_path):
    archive = _write(tmp_path, expose=["53/udp"])
    members = _members(archive)
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"])
    assert index["mediaType"] == imagetool.MEDIA_INDEX
    [desc] = index["manifests"]
    # ctr images import (containerd 1.6) names the image by io.containerd.image.name.
    assert desc["annotations"] == {"io.containerd.image.name": "localhost/scalable/test:abc123",
                                   "org.opencontainers.image.ref.name": "abc123"}
    assert desc["platform"] == {"architecture": imagetool.go_arch(), "os": "linux"}

    every_blob = {n for n in members if n.startswith("blobs/")}
    referenced = set()
    for d in [desc]:
        data = _blob(members, d["digest"])
        assert d["size"] == len(data) and d["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        referenced.add(d["digest"])
        manifest = json.loads(data)
    assert manifest["mediaType"] == imagetool.MEDIA_MANIFEST
    for d in [manifest["config"], *manifest["layers"]]:
        data = _blob(members, d["digest"])
        assert d["size"] == len(data) and d["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        referenced.add(d["digest"])
    assert {f"blobs/sha256/{d[7:]}" for d in referenced} == every_blob, "no blob missing, none extra"

    config = json.loads(_blob(members, manifest["config"]["digest"]))
    assert config["config"]["Entrypoint"] == ["/prog"] and config["config"]["User"] == "65535:65535"
    assert config["config"]["ExposedPorts"] == {"53/udp": {}}
    # The diff_id is the uncompressed layer's digest; the layer holds the program, executable.
    layer = gzip.decompress(_blob(members, manifest["layers"][0]["digest"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        [prog] = tar.getmembers()
        assert (prog.name, prog.mode, prog.uid, prog.gid) == ("prog", 0o755, 0, 0)

    # read_oci_archive agrees, and catches a blob that does not match its digest.
    assert [i["ref"] for i in imagetool.read_oci_archive(archive)["images"]] == ["localhost/scalable/test:abc123"]


def test_oci_archive_is_reproducible_and_a_tampered_blob_is_caught(tmp_path):
    a = _write(tmp_path, "a.tar")
    b = _write(tmp_path, "b.tar")
    assert a.read_bytes() == b.read_bytes()
    members = _members(a)
    [desc] = json.loads(members["index.json"])["manifests"]
    [layer] = json.loads(_blob(members, desc["digest"]))["layers"]
    layer_name = f"blobs/sha256/{layer['digest'][7:]}"
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in members.items():
            if name == layer_name:
                data = data[:-1] + bytes([data[-1] ^ 1])
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="does not match"):
        imagetool.read_oci_archive(bad)


def test_a_ref_without_a_tag_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no tag"):
        _write(tmp_path, ref="localhost/scalable/test")


@pytest.fixture
def testenv(tmp_path, monkeypatch):
    """An empty SCALABLE_TESTENV_DIR, and the input hashes made cheap and fixed."""
    monkeypatch.setenv("SCALABLE_TESTENV_DIR", str(tmp_path))
    refs = {name: (f"{i:064x}", f"localhost/scalable/{name}:{i:08x}") for i, name in enumerate(imagetool.ALL_IMAGES, 1)}
    monkeypatch.setattr(imagetool, "inputs", lambda name, **kw: refs[name])
    (tmp_path / "images").mkdir()
    return tmp_path, refs


def _current(tmp_path: Path, refs: dict, **override) -> None:
    out = {}
    for name in imagetool.NODE_IMAGES:
        archive = tmp_path / "images" / f"{name}.tar"
        archive.write_bytes(b"x")
        digest, ref = refs[name]
        out[name] = {"ref": ref, "archive": str(archive), "inputs": digest}
    out.update(override)
    (tmp_path / "images" / "current.json").write_text(json.dumps(out))


def test_node_images_reads_current_json(testenv):
    tmp_path, refs = testenv
    _current(tmp_path, refs)
    found = images.node_images()
    assert set(found) == set(imagetool.NODE_IMAGES)
    assert found["operator"] == images.NodeImage("operator", refs["operator"][1], tmp_path / "images" / "operator.tar")


def test_a_missing_current_json_names_make_images(testenv):
    with pytest.raises(MissingBinaryError, match="make images"):
        images.node_images()


def test_a_missing_archive_names_make_images(testenv):
    tmp_path, refs = testenv
    _current(tmp_path, refs)
    (tmp_path / "images" / "dask.tar").unlink()
    with pytest.raises(MissingBinaryError, match=r"dask image's archive .* is missing.*make images"):
        images.node_images()


def test_an_unreadable_or_incomplete_current_json_names_make_images(testenv):
    tmp_path, refs = testenv
    (tmp_path / "images" / "current.json").write_text("{not json")
    with pytest.raises(MissingBinaryError, match="unreadable.*make images"):
        images.node_images()
    _current(tmp_path, refs)
    data = json.loads((tmp_path / "images" / "current.json").read_text())
    del data["pause"]
    (tmp_path / "images" / "current.json").write_text(json.dumps(data))
    with pytest.raises(MissingBinaryError, match="no pause image.*make images"):
        images.node_images()


def test_a_stale_image_names_make_images(testenv):
    """The operator's inputs changed after the build (an edit, another pip freeze): its image
    must not silently be used."""
    tmp_path, refs = testenv
    _current(tmp_path, refs, operator={"ref": "localhost/scalable/operator:0ld0ld00",
                                       "archive": str(tmp_path / "images" / "operator.tar"), "inputs": "0" * 64})
    with pytest.raises(MissingBinaryError, match=r"operator image localhost/scalable/operator:0ld0ld00 is stale.*make images"):
        images.node_images()
    assert images.node_images(check_inputs=False)["operator"].ref == "localhost/scalable/operator:0ld0ld00"


def test_the_hashes_follow_the_inputs(tmp_path, monkeypatch):
    """The real input hashes: the operator's changes with its code and with the constraints,
    and what is built on it (dask, dask-kubernetes) changes with it."""
    root = tmp_path / "repo"
    for rel in ("operator/Dockerfile", ".dockerignore", "pyproject.toml", "README.md",
                "operator/scalable/__init__.py", "hack/images/python-base.sh",
                "hack/images/dask.Dockerfile", "hack/images/dask-kubernetes.Dockerfile"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "operator/scalable/__pycache__").mkdir()
    (root / "operator/scalable/__pycache__/x.cpython-311.pyc").write_bytes(b"bytecode")
    (root / "hack/versions.env").write_text("COREDNS_VERSION=v1.12.1\n")
    pins = {"text": "dask==2026.8.0\ndask-kubernetes==2026.3.0\n"}
    monkeypatch.setenv("SCALABLE_TESTENV_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(imagetool, "constraints", lambda python=None: pins["text"])

    def refs():
        imagetool._inputs.cache_clear()
        return {n: imagetool.inputs(n, root=root)[1] for n in ("python", "operator", "dask", "dask-kubernetes")}

    first = refs()
    assert first["dask-kubernetes"].startswith("localhost/scalable/dask-kubernetes-operator:2026.3.0-")
    assert refs() == first
    (root / "operator/scalable/__pycache__/x.cpython-311.pyc").write_bytes(b"other bytecode")
    assert refs() == first, "__pycache__ is not an input (.dockerignore leaves it out)"
    (root / "operator/scalable/__init__.py").write_text("changed")
    second = refs()
    assert second["python"] == first["python"]
    assert all(second[n] != first[n] for n in ("operator", "dask", "dask-kubernetes"))
    pins["text"] = "dask==2026.9.0\ndask-kubernetes==2026.3.0\n"
    third = refs()
    assert third["operator"] != second["operator"] and third["dask"] != second["dask"]
    imagetool._inputs.cache_clear()
    with pytest.raises(imagetool.InputError, match="make testenv"):
        imagetool.inputs("coredns", root=root)
