"""Issue 15, point 9: a tenant with write access to the shared volume cannot redirect the operator.

Real files, links and FIFOs on a real file system. Before: the loader loaded a run directory
linked in from another namespace, the run writer wrote through a linked ``tasks.jsonl``, a
FIFO hung every reader, a link to ``/dev/zero`` was read without bound, a 398 KiB skops zip
bomb cost 1 GiB before it was refused. Now each is refused (and, for the loader, counted), no
reader waits, and the model store checks the archive's declared sizes before inflating it.

Rerun: ``pytest tests/unit/telemetry/test_volume_links.py -q``
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import os
import resource
import time
import warnings
import zipfile

import numpy as np
import pytest

from scalable.advising.model_store import METADATA_FILE, MODEL_FILE, ModelStore, ModelStoreError
from scalable.controller.training import read_champion
from scalable.telemetry.dedupe import RunKeys
from scalable.telemetry.loader import load_run_infos, load_tasks
from scalable.telemetry.store import RunStore

GOOD = {"task": "t", "submitted_at": 1.7e9, "duration_s": 3.0}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _within(seconds, fn, *args, **kwargs):
    """fn(*args, **kwargs) in a thread; fails (instead of hanging the suite) if it takes longer."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn, *args, **kwargs).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"{getattr(fn, '__name__', fn)} still blocked after {seconds} s")
    finally:
        pool.shutdown(wait=False)


def _run(root, run_id, n=1):
    with RunStore(root).open_run(run_id=run_id, workflow="wf") as w:
        w.append_many([{**GOOD, "duration_s": float(i + 1)} for i in range(n)])


@pytest.fixture
def volume(tmp_path):
    ours, theirs = tmp_path / "team-a" / "runs", tmp_path / "team-b" / "runs"
    _run(ours, "mine", 2)
    _run(theirs, "secret", 5)
    return ours, theirs


def test_a_run_linked_in_from_another_namespace_is_not_loaded(volume):
    ours, theirs = volume
    (ours / "stolen").symlink_to(theirs / "secret")
    table = _quiet(load_tasks, ours)
    assert set(table.frame["run_id"]) == {"mine"} and len(table) == 2
    assert table.skipped["unreadable_file"] == 1 and "link" in table.skipped.examples["unreadable_file"]
    infos, report = _quiet(load_run_infos, ours)
    assert [i.run_id for i in infos] == ["mine"] and report.total == 1
    assert RunStore(ours).run_ids() == ["mine"]
    with pytest.raises(OSError) as caught:  # and nobody writes into theirs through it
        RunStore(ours).open_run(run_id="stolen")
    assert caught.value.errno == errno.ELOOP
    assert len((theirs / "secret" / "tasks.jsonl").read_text().splitlines()) == 5


def test_a_linked_record_file_is_neither_read_nor_written_through(volume, tmp_path):
    ours, theirs = volume
    target = theirs / "secret" / "tasks.jsonl"
    before = target.read_bytes()
    _run(ours, "linked")
    os.unlink(ours / "linked" / "tasks.jsonl")
    (ours / "linked" / "tasks.jsonl").symlink_to(target)
    table = _quiet(load_tasks, ours, cache=False)
    assert set(table.frame["run_id"]) == {"mine"} and table.skipped["unreadable_file"] == 1
    writer = RunStore(ours).open_run(run_id="linked")
    with pytest.raises(OSError) as caught:
        writer.append({**GOOD})
    assert caught.value.errno == errno.ELOOP
    assert target.read_bytes() == before
    with pytest.raises(OSError):
        RunKeys(ours / "linked", ["tasks.jsonl"]).refresh()
    (ours / "zero").mkdir()
    (ours / "zero" / "tasks.jsonl").symlink_to("/dev/zero")  # would be read without end
    table = _within(10, _quiet, load_tasks, ours, cache=False)
    assert set(table.frame["run_id"]) == {"mine"}


def test_a_fifo_blocks_no_reader(volume):
    ours, _ = volume
    (ours / "piped").mkdir()
    os.mkfifo(ours / "piped" / "tasks.jsonl")
    os.mkfifo(ours / "piped" / "run.json")
    table = _within(10, _quiet, load_tasks, ours, cache=False)
    assert len(table) == 2 and table.skipped["unreadable_file"] == 1
    infos, report = _within(10, _quiet, load_run_infos, ours)
    assert [i.run_id for i in infos] == ["mine"] and report.total == 1
    assert _within(10, RunStore(ours).run_info, "piped") is None
    with pytest.raises(OSError):
        _within(10, RunKeys(ours / "piped", ["tasks.jsonl"]).refresh)
    models = ours.parent / "models"
    models.mkdir()
    os.mkfifo(models / "champion.json")
    assert _within(10, read_champion, models) is None


def _bomb(path, inflated: int) -> None:
    """A zip whose one member inflates to ``inflated`` zero bytes, written in 1 MiB steps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("schema.json", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(inflated >> 20):
                member.write(chunk)


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    store = ModelStore(tmp_path)
    version = store.save("default", {"weights": np.arange(3.0)}, {})
    _bomb(version / MODEL_FILE, 1 << 29)  # 512 MiB of zeros in about half a MiB
    size = (version / MODEL_FILE).stat().st_size
    assert size < 1 << 20
    meta = json.loads((version / METADATA_FILE).read_text())
    meta["model_sha256"] = hashlib.sha256((version / MODEL_FILE).read_bytes()).hexdigest()  # checksum matches
    (version / METADATA_FILE).write_text(json.dumps(meta))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(ModelStoreError, match="declares"):
        store.load_model("default")
    assert time.monotonic() - started < 2
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kib < 64 * 1024, f"refusing the bomb cost {grown_kib / 1024:.0f} MiB"


def test_a_linked_model_version_is_refused(tmp_path):
    theirs, ours = ModelStore(tmp_path / "b"), ModelStore(tmp_path / "a")
    version = theirs.save("default", {"weights": np.arange(3.0)}, {})
    (tmp_path / "a" / "default").mkdir(parents=True)
    (tmp_path / "a" / "default" / "v1").symlink_to(version)
    with pytest.raises(ModelStoreError):
        ours.load_model("default", "v1")
    real = ours.save("default", {"weights": np.arange(3.0)}, {})  # v2, a real directory
    os.unlink(real / MODEL_FILE)
    os.symlink(version / MODEL_FILE, real / MODEL_FILE)
    with pytest.raises(ModelStoreError, match="cannot read"):
        ours.load_model("default", "v2")
