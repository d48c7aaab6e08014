"""The container images of the real test node, built by ``make images`` (hack/images-build.sh).

Each is an OCI archive under ``$SCALABLE_TESTENV_DIR/images`` that ``ctr -n k8s.io images
import <archive>`` names by its ref (``localhost/scalable/...``, so nothing asks a registry).
:func:`node_images` reads the list the build wrote (``current.json``) and checks it against
the inputs as they are now (hack/images/imagetool.py recomputes the hashes): an image built
from an older operator, Dockerfile or pip freeze is never used without notice.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tests.support.testenv import REPO_ROOT, MissingBinaryError

IMAGES_HINT = "run `make images` (hack/images-build.sh) to build the test node's images"


@dataclass(frozen=True)
class NodeImage:
    name: str
    ref: str
    archive: Path


def _imagetool() -> ModuleType:
    name = "scalable_hack_imagetool"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "hack" / "images" / "imagetool.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


imagetool = _imagetool()


def images_dir() -> Path:
    return imagetool.images_dir()


def node_images(*, check_inputs: bool = True) -> dict[str, NodeImage]:
    """Every image the node imports (pause, coredns, operator, dask, dask-kubernetes), by name.

    Raises MissingBinaryError naming `make images` when current.json or an archive is missing,
    or (with `check_inputs`) when an image's inputs changed since it was built.
    """
    current = imagetool.current_file()
    if not current.is_file():
        raise MissingBinaryError(f"{current} is missing; {IMAGES_HINT}")
    try:
        entries = json.loads(current.read_text())
        if not isinstance(entries, dict):
            raise TypeError("not an object")
        found = {name: (str(e["ref"]), Path(e["archive"]), str(e.get("inputs", ""))) for name, e in entries.items()}
    except (ValueError, TypeError, KeyError) as e:
        raise MissingBinaryError(f"{current} is unreadable ({e}); {IMAGES_HINT}") from e
    out: dict[str, NodeImage] = {}
    for name in imagetool.NODE_IMAGES:
        if name not in found:
            raise MissingBinaryError(f"{current} lists no {name} image; {IMAGES_HINT}")
        ref, archive, digest = found[name]
        if not archive.is_file():
            raise MissingBinaryError(f"the {name} image's archive {archive} is missing; {IMAGES_HINT}")
        if check_inputs:
            try:
                want_digest, want_ref = imagetool.inputs(name)
            except imagetool.InputError as e:
                raise MissingBinaryError(f"{name}: {e}; then {IMAGES_HINT}") from e
            if (digest, ref) != (want_digest, want_ref):
                raise MissingBinaryError(
                    f"the {name} image {ref} is stale: its inputs changed since it was built "
                    f"(now {want_ref}); {IMAGES_HINT}")
        out[name] = NodeImage(name=name, ref=ref, archive=archive)
    return out
