"""Versioned, tamper-evident storage of trained advisors.

Layout: ``<root>/<name>/v<N>/`` holding ``model.skops`` and ``metadata.json``. A model file is
code-adjacent data that the operator loads on a shared volume, so loading is fail-closed:

* the file is skops, never pickle or joblib, and it is loaded with an explicit list of
  trusted types: a file naming any other type is refused before anything is constructed;
* ``metadata.json`` records the file's sha256, checked before skops even opens it, so a
  truncated or edited file is refused with a clear :class:`ModelStoreError`;
* a version is written into a temporary directory beside its final place, fsynced, and
  renamed into place, so a reader never sees half a model and a crash leaves no ``v<N>``;
* reading follows no symbolic link below the store's root (each directory and the file are
  opened through the descriptor of the one above with ``O_NOFOLLOW``), takes regular files
  only, at most :data:`MAX_MODEL_FILE_BYTES`, and reads the model once: the bytes whose
  sha256 was checked are the bytes skops loads, and the zip archive's declared sizes are
  checked (at most :data:`MAX_INFLATED_BYTES`, and at most :data:`MAX_INFLATION` times the
  archive) before anything is inflated, so a zip bomb costs nothing;
* :meth:`ModelStore.prune` keeps the newest N versions and the champion, so retraining does
  not fill the shared volume.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io
import json
import os
import platform
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

from scalable.telemetry.store import read_fd

__all__ = [
    "ModelStore",
    "ModelStoreError",
    "METADATA_SCHEMA_VERSION",
    "TRUSTED_TYPES",
    "MODEL_FILE",
    "METADATA_FILE",
    "frame_digest",
]

METADATA_SCHEMA_VERSION = 1
MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
_VERSION_DIR = re.compile(r"^v(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

#: the largest model file read, and the most its archive may declare once inflated
MAX_MODEL_FILE_BYTES = 1 << 30
MAX_INFLATED_BYTES = 4 << 30
#: how many times its own size an archive may inflate to (numbers and trees compress a few times;
#: a zip bomb by thousands)
MAX_INFLATION = 200
_MAX_METADATA_BYTES = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: types beyond skops' own defaults (builtins, numpy arrays, scikit-learn estimators) that a
#: model file of ours may contain; anything else makes the file untrusted
TRUSTED_TYPES = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    "numpy.dtype",
)


class ModelStoreError(RuntimeError):
    """A model that cannot be trusted or read: missing, corrupt, tampered with, or holding
    types outside the trusted list."""


def _library_versions() -> dict[str, str]:
    import numpy
    import pandas
    import sklearn
    import skops

    from scalable._version import __version__

    return {
        "python": platform.python_version(),
        "scalable": __version__,
        "scikit-learn": sklearn.__version__,
        "skops": skops.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_below(root: Path, parts: list[str], limit: int) -> bytes:
    """The bytes of ``root/parts[0]/.../parts[-1]``, each part opened through the descriptor of
    the one above with ``O_NOFOLLOW`` (a link anywhere below ``root`` is ``ELOOP``), only if it
    is a regular file no larger than ``limit`` (a FIFO does not block: ``O_NONBLOCK``)."""
    fd = os.open(root, _DIR & ~os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = inner
        inner = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        os.close(fd)
        fd = inner
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", "/".join(parts))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", "/".join(parts))
        return read_fd(fd, st.st_size)
    finally:
        os.close(fd)


def _check_archive(data: bytes, where: Path) -> None:
    """Refuse an archive whose members declare more than the limits, before inflating any."""
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelStoreError(f"model file {where} is not a skops archive: {exc}") from exc
    declared = sum(m.file_size for m in members)
    if declared > MAX_INFLATED_BYTES or declared > MAX_INFLATION * max(len(data), 1) + (1 << 20):
        raise ModelStoreError(f"model file {where} declares {declared} bytes inflated from {len(data)}: refused "
                              f"(at most {MAX_INFLATED_BYTES} and {MAX_INFLATION} times the file)")


def frame_digest(frame: Any) -> str:
    """A stable digest of training data (pandas' fixed-key row hashes, not ``hash()``)."""
    import pandas as pd

    if len(frame) == 0:
        return hashlib.sha256(b"").hexdigest()
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ModelStore:
    """Model versions under ``root``: ``save``, ``versions``, ``latest``, ``load``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _model_dir(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise ModelStoreError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-'")
        return self.root / name

    def versions(self, name: str = "default") -> list[int]:
        directory = self._model_dir(name)
        if not directory.is_dir():
            return []
        found = (_VERSION_DIR.fullmatch(p.name) for p in directory.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self, name: str = "default") -> int | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def path(self, name: str = "default", version: int | str | None = None) -> Path:
        number = self._resolve(name, version)
        return self._model_dir(name) / f"v{number}"

    def _resolve(self, name: str, version: int | str | None) -> int:
        if version is None:
            latest = self.latest(name)
            if latest is None:
                raise ModelStoreError(f"no model {name!r} in {self.root}")
            return latest
        text = str(version)
        match = _VERSION_DIR.fullmatch(text) or re.fullmatch(r"(\d+)", text)
        if not match:
            raise ModelStoreError(f"invalid model version {version!r}: use a number or v<number>")
        return int(match.group(1))

    def save(
        self,
        name: str,
        payload: Mapping[str, Any],
        metadata: Mapping[str, Any],
        training_digest: str | None = None,
    ) -> Path:
        """Write ``payload`` (skops-serialisable) as the next version of ``name``, atomically."""
        import skops.io as sio

        directory = self._model_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))
        try:
            model_path = staging / MODEL_FILE
            sio.dump(dict(payload), model_path)
            with open(model_path, "rb+") as handle:
                os.fsync(handle.fileno())
            while True:
                number = (self.latest(name) or 0) + 1
                final = directory / f"v{number}"
                record = {
                    "schema_version": METADATA_SCHEMA_VERSION,
                    "name": name,
                    "version": f"v{number}",
                    "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    "model_file": MODEL_FILE,
                    "model_sha256": _sha256(model_path),
                    "format": "skops",
                    "trusted_types": list(TRUSTED_TYPES),
                    "libraries": _library_versions(),
                    "training_data_digest": training_digest,
                    **dict(metadata),
                }
                meta_path = staging / METADATA_FILE
                with open(meta_path, "w", encoding="utf-8") as handle:
                    json.dump(record, handle, indent=2, sort_keys=True, default=str)
                    handle.flush()
                    os.fsync(handle.fileno())
                _fsync_dir(staging)
                try:
                    os.rename(staging, final)
                except OSError:
                    if final.exists():
                        continue  # another writer took this number; take the next one
                    raise
                _fsync_dir(directory)
                return final
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def prune(self, name: str = "default", keep: int = 5, protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove all but the newest ``keep`` versions of ``name``, never one named in ``protect``
        (the champion); returns the versions removed, oldest first.

        Every training saves a version, so without this the shared volume fills up. A version is
        first renamed to a hidden name (one rename: a reader sees it whole or not at all), then
        deleted; a reader that opened its files before keeps reading them.
        """
        if keep < 1:
            raise ValueError(f"keep at least the newest version, not {keep}")
        directory = self._model_dir(name)
        versions = self.versions(name)
        removed = []
        for number in versions[:-keep]:
            version = f"v{number}"
            if version in protect:
                continue
            doomed = directory / f".pruned-{version}-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                os.rename(directory / version, doomed)
            except FileNotFoundError:
                continue  # another process pruned it
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(version)
        if removed:
            _fsync_dir(directory)
        return removed

    def metadata(self, name: str = "default", version: int | str | None = None) -> dict[str, Any]:
        path = self.path(name, version) / METADATA_FILE
        try:
            record = json.loads(_read_below(self.root, [name, path.parent.name, METADATA_FILE], _MAX_METADATA_BYTES))
        except FileNotFoundError as exc:
            raise ModelStoreError(f"model {name!r} has no {METADATA_FILE} at {path.parent}") from exc
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelStoreError(f"cannot read {path}: {exc}") from exc
        if not isinstance(record, dict) or record.get("schema_version") != METADATA_SCHEMA_VERSION:
            raise ModelStoreError(f"{path} has an unknown metadata schema version")
        return record

    def load_model(self, name: str = "default", version: int | str | None = None) -> tuple[Any, dict[str, Any], Path]:
        """The payload, metadata and directory of a version, after checking it can be trusted."""
        import skops.io as sio

        directory = self.path(name, version)
        record = self.metadata(name, version)
        model_path = directory / MODEL_FILE
        try:  # read once: the bytes checked below are the bytes loaded (no swap in between)
            data = _read_below(self.root, [name, directory.name, MODEL_FILE], MAX_MODEL_FILE_BYTES)
        except FileNotFoundError as exc:
            raise ModelStoreError(f"model file missing: {model_path}") from exc
        except OSError as exc:
            raise ModelStoreError(f"cannot read model file {model_path}: {exc.strerror or exc}") from exc
        expected = record.get("model_sha256")
        actual = hashlib.sha256(data).hexdigest()
        if not expected or actual != expected:
            raise ModelStoreError(
                f"model file {model_path} does not match the sha256 in its metadata: it was changed or is corrupt"
            )
        _check_archive(data, model_path)
        try:
            untrusted = set(sio.get_untrusted_types(data=data))
        except Exception as exc:  # skops raises many kinds on a malformed file
            raise ModelStoreError(f"cannot read model file {model_path}: {exc}") from exc
        refused = sorted(untrusted - set(TRUSTED_TYPES))
        if refused:
            raise ModelStoreError(f"model file {model_path} holds untrusted types: {', '.join(refused)}")
        try:
            payload = sio.loads(data, trusted=sorted(untrusted))
        except Exception as exc:
            raise ModelStoreError(f"cannot load model file {model_path}: {exc}") from exc
        if not isinstance(payload, dict):
            raise ModelStoreError(f"model file {model_path} does not hold a model payload")
        return payload, record, directory

    def resolve_root(self) -> tuple["ModelStore", str, int | None]:
        """Interpret ``root`` given by a user: a store root, a model directory or a version
        directory; returns the store, model name and version (None for the latest)."""
        if (self.root / METADATA_FILE).is_file() and _VERSION_DIR.fullmatch(self.root.name):
            return ModelStore(self.root.parent.parent), self.root.parent.name, int(self.root.name[1:])
        if self.root.is_dir() and any(_VERSION_DIR.fullmatch(p.name) for p in self.root.iterdir() if p.is_dir()):
            return ModelStore(self.root.parent), self.root.name, None
        return self, "default", None
