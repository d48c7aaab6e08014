"""Training AdvisorModels off the event loop, champion/challenger, and serving the champion.

* **Off the loop.** Fitting a LearnedAdvisor takes seconds to minutes of CPU; it runs in a
  worker process (``ProcessPoolExecutor`` with the ``spawn`` start method, so the child does not
  inherit the operator's event loop or sockets). Handlers only await the future.
* **Champion/challenger.** Every training saves a new version in the AdvisorModel's model store
  (the challenger). It becomes the champion only if its held-out quality is not worse than the
  champion's: its coverage shortfall (promised minus measured, on runs held out by time) is at
  most the champion's plus :data:`COVERAGE_TOLERANCE`, and if the shortfalls tie, its slack is
  at most the champion's plus :data:`SLACK_TOLERANCE`. The champion's version is kept in
  ``champion.json`` next to the store; the decision and its reason go to the status.
* **Serving.** :class:`AdvisorProvider` gives a ScalableWorkflow the champion LearnedAdvisor of
  its AdvisorModel, else the percentile ResourceAdvisor fitted on the namespace's history, and
  the ModelReady condition that says which and why.
* **Between retrains.** Every ``history_ttl_s`` the champion is brought up to date with the
  namespace's history (``LearnedAdvisor.update``: the history statistics the trees read, and
  the adaptive offset that moves the answers by the misses of the runs finished since), on a
  fresh copy loaded from the store and swapped in whole, so no answer reads a half-updated
  model; the offset carries over from the copy before. A failed refresh keeps the copy in use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import multiprocessing
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalable.advising import defaults
from scalable.controller.storage import TelemetryRoot

__all__ = [
    "AdvisorChoice",
    "AdvisorProvider",
    "COVERAGE_TOLERANCE",
    "KEEP_VERSIONS",
    "MIN_RETRAIN_INTERVAL_S",
    "SLACK_TOLERANCE",
    "Trainer",
    "compare",
    "parse_duration",
    "read_champion",
    "train_job",
]

#: the shortest time between two trainings of one AdvisorModel (after its first): a spec asking
#: for less (``retrainInterval: 0s``, or a tiny ``newRecordThreshold`` with a busy client) would
#: otherwise keep the shared training pool busy and write a version per check
MIN_RETRAIN_INTERVAL_S = 300.0
#: model versions kept besides the champion (older challengers are pruned after each training)
KEEP_VERSIONS = 5
COVERAGE_TOLERANCE = 0.02
SLACK_TOLERANCE = 0.05
CHAMPION_FILE = "champion.json"
MODEL_NAME = "default"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "1h30m"."""
    total, end = 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != end:
            raise ValueError(f"cannot read duration {text!r}")
        total += float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]
        end = match.end()
    if end != len(text) or not text:
        raise ValueError(f"cannot read duration {text!r}: use e.g. 30m, 1h, 1h30m")
    return total


def read_champion(model_dir: Path) -> dict[str, Any] | None:
    """``champion.json``, or None when it is missing, unreadable, a link, not a regular file (a
    FIFO would hang the reader) or larger than 1 MiB: the volume may be writable by tenants."""
    import stat

    try:
        fd = os.open(model_dir / CHAMPION_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 20:
            return None
        champion = json.loads(os.read(fd, st.st_size))
        return champion if isinstance(champion, dict) else None
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)


def _write_champion(model_dir: Path, champion: dict[str, Any]) -> None:
    from scalable.telemetry.store import atomic_write_bytes

    atomic_write_bytes(model_dir / CHAMPION_FILE, json.dumps(champion, indent=2, sort_keys=True).encode() + b"\n")


def _shortfall(quality: dict[str, Any] | None) -> float | None:
    memory = (quality or {}).get("memory") or {}
    measured, promised = memory.get("coverage_measured"), memory.get("coverage_promised")
    if measured is None or promised is None:
        return None
    return max(0.0, float(promised) - float(measured))


def compare(challenger: dict[str, Any] | None, champion: dict[str, Any] | None) -> tuple[bool, str]:
    """(promote?, why) from two held-out quality dicts (LearnedAdvisor.quality)."""
    if champion is None:
        return True, "first model: promoted"
    new_gap, old_gap = _shortfall(challenger), _shortfall(champion)
    if new_gap is None:
        if old_gap is None:
            return True, "neither model has a held-out coverage measurement; the newer one is promoted"
        return False, "kept the champion: the challenger's coverage could not be measured on held-out runs"
    if old_gap is None:
        return True, f"promoted: coverage shortfall {new_gap:.3f} measured, the champion had none measured"
    if new_gap > old_gap + COVERAGE_TOLERANCE:
        return False, (f"kept the champion: challenger coverage shortfall {new_gap:.3f} is worse than the champion's "
                       f"{old_gap:.3f} by more than {COVERAGE_TOLERANCE}")
    new_slack = ((challenger or {}).get("memory") or {}).get("slack")
    old_slack = ((champion or {}).get("memory") or {}).get("slack")
    if abs(new_gap - old_gap) <= COVERAGE_TOLERANCE and new_slack is not None and old_slack is not None \
            and new_slack > old_slack + SLACK_TOLERANCE:
        return False, (f"kept the champion: same coverage but challenger slack {new_slack:.3f} exceeds the champion's "
                       f"{old_slack:.3f} by more than {SLACK_TOLERANCE}")
    return True, f"promoted: coverage shortfall {new_gap:.3f} vs champion {old_gap:.3f}" + (
        f", slack {new_slack:.3f} vs {old_slack:.3f}" if new_slack is not None and old_slack is not None else "")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def train_job(request: dict[str, Any]) -> dict[str, Any]:
    """Runs in the worker process: load history, fit, save the challenger, decide on promotion.

    Returns a plain dict (it crosses a process boundary): ``outcome`` is one of
    ``promoted``, ``kept``, ``insufficient``; failures raise and the caller reports them.
    """
    from scalable.advising.learned_advisor import LearnedAdvisor
    from scalable.telemetry.loader import load_tasks
    from scalable.telemetry.store import RunStore

    started = time.perf_counter()
    runs_dir = Path(request["runs_dir"])
    model_dir = Path(request["model_dir"])
    table = load_tasks(runs_dir)
    frame = table.frame
    workflows = set(request.get("workflows") or [])
    if workflows and len(frame):
        store = RunStore(runs_dir)
        run_workflow = {run: (store.run_info(run).workflow if store.run_info(run) else None) for run in frame["run_id"].unique()}
        frame = frame[frame["run_id"].map(run_workflow).isin(workflows)]
    tasks = set(request.get("tasks") or [])
    if tasks:
        frame = frame[frame["task"].isin(tasks)]
    frame = frame.sort_values("end_time", kind="stable").tail(int(request.get("max_records") or 1_000_000))
    records, runs = int(len(frame)), int(frame["run_id"].nunique()) if len(frame) else 0
    min_history = int(request.get("min_history") or defaults.MIN_HISTORY)
    per_task = frame["task"].value_counts() if len(frame) else None
    enough = int((per_task >= min_history).sum()) if per_task is not None else 0
    base = {"records": records, "runs": runs, "seconds": 0.0}
    if enough == 0:
        base["outcome"] = "insufficient"
        base["message"] = (f"{records} records in {runs} runs; no task has the {min_history} observations "
                           "minHistory asks for")
        base["seconds"] = time.perf_counter() - started
        return base
    if not any(frame[column].notna().any() for column in table.feature_columns):
        # the trees split on input features; with none there is nothing to fit (sklearn would
        # raise "0 feature(s)"), and the percentile advisor already answers per task
        base["outcome"] = "insufficient"
        base["message"] = (f"{records} records in {runs} runs, none with input features: a learned model "
                           "needs at least one; the percentile advisor serves meanwhile")
        base["seconds"] = time.perf_counter() - started
        return base
    advisor = LearnedAdvisor(
        model_type=request.get("model_type", defaults.MODEL_TYPE),
        coverage=float(request.get("coverage", defaults.COVERAGE)),
        min_history=min_history,
        confidence_threshold=float(request.get("confidence_threshold", defaults.CONFIDENCE_THRESHOLD)),
    ).fit(frame)
    quality = _clean(advisor.quality)
    digest = f"{records}:{float(frame['end_time'].max()):.3f}"
    version_dir = advisor.save(model_dir, name=MODEL_NAME, training_digest=digest)
    champion = read_champion(model_dir)
    promote, why = compare(quality, (champion or {}).get("quality"))
    now = time.time()
    if promote:
        champion = {"version": version_dir.name, "quality": quality, "trained_at": now, "records": records, "runs": runs,
                    "model_type": advisor.model_type}
        _write_champion(model_dir, champion)
    from scalable.advising.model_store import ModelStore

    keep = int(request.get("keep_versions") or KEEP_VERSIONS)
    pruned = ModelStore(model_dir).prune(MODEL_NAME, keep=keep, protect={str((champion or {}).get("version"))})
    base.update(
        outcome="promoted" if promote else "kept", message=why, challenger=version_dir.name, quality=quality,
        champion=champion, trained_at=now, seconds=time.perf_counter() - started, pruned=pruned,
    )
    return base


class Trainer:
    """A pool of training processes shared by all AdvisorModels of the operator."""

    def __init__(self, workers: int = 1) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"))

    async def train(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.pool, train_job, request)
        return await asyncio.wait_for(future, timeout=timeout)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class AdvisorChoice:
    advisor: Any
    learned: Any
    version: str | None
    condition: dict[str, Any]


class AdvisorProvider:
    """The advisor a ScalableWorkflow sizes and predicts with; cached per model version."""

    def __init__(self, kube: Any, root: TelemetryRoot, history_ttl_s: float = 60.0) -> None:
        self.kube = kube
        self.root = root
        self.history_ttl_s = history_ttl_s
        #: (namespace, model, version) -> (monotonic time of the last refresh, advisor)
        self._learned: dict[tuple[str, str, str], tuple[float, Any]] = {}
        self._percentile: dict[str, tuple[float, Any]] = {}
        # one load per namespace or model at a time: hundreds of daemons start together and
        # would otherwise all read the same history at once
        self._locks: dict[Any, asyncio.Lock] = {}

    def _lock(self, key: Any) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def percentile(self, namespace: str) -> Any:
        cached = self._percentile.get(namespace)
        if cached is not None and time.monotonic() - cached[0] < self.history_ttl_s:
            return cached[1]
        async with self._lock(("percentile", namespace)):
            cached = self._percentile.get(namespace)
            if cached is not None and time.monotonic() - cached[0] < self.history_ttl_s:
                return cached[1]
            return await self._fit_percentile(namespace)

    async def _fit_percentile(self, namespace: str) -> Any:

        def fit() -> Any:
            from scalable.advising.resource_advisor import ResourceAdvisor
            from scalable.telemetry.loader import load_tasks

            runs = self.root.runs_dir(namespace)
            return ResourceAdvisor().fit(load_tasks(runs).frame)

        advisor = await asyncio.to_thread(fit)
        self._percentile[namespace] = (time.monotonic(), advisor)
        return advisor

    async def learned(self, namespace: str, name: str) -> tuple[Any, str | None]:
        model_dir = self.root.model_dir(namespace, name)
        champion = await asyncio.to_thread(read_champion, model_dir)
        if champion is None:
            return None, None
        key = (namespace, name, champion["version"])
        cached = self._learned.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.history_ttl_s:
            return cached[1], champion["version"]
        async with self._lock(("learned", namespace, name)):
            cached = self._learned.get(key)
            if cached is not None and time.monotonic() - cached[0] < self.history_ttl_s:
                return cached[1], champion["version"]
            previous = cached[1] if cached is not None else None
            runs = self.root.runs_dir(namespace)
            advisor = await asyncio.to_thread(_refreshed, model_dir, champion["version"], runs, previous)
            for old in [k for k in self._learned if k[:2] == key[:2]]:
                del self._learned[old]
            self._learned[key] = (time.monotonic(), advisor)
        return advisor, champion["version"]

    def forget(self, namespace: str, name: str) -> None:
        for key in [k for k in self._learned if k[:2] == (namespace, name)]:
            del self._learned[key]

    async def for_workflow(self, namespace: str, spec: Any) -> AdvisorChoice:
        ref = spec.advisorModelRef
        if ref is None:
            return AdvisorChoice(await self.percentile(namespace), None, None, {
                "type": "ModelReady", "status": False, "reason": "NoAdvisorModel",
                "message": "no advisorModelRef: sizing from percentiles of the namespace's history, scaling reactively"})
        model = await self.kube.get("AdvisorModel", namespace, ref.name)
        if model is None:
            return AdvisorChoice(await self.percentile(namespace), None, None, {
                "type": "ModelReady", "status": False, "reason": "AdvisorModelNotFound",
                "message": f"AdvisorModel {ref.name!r} not found in {namespace!r}; using the percentile advisor"})
        try:
            advisor, version = await self.learned(namespace, ref.name)
        except Exception as exc:  # noqa: BLE001 - a model that does not load must not stop sizing
            return AdvisorChoice(await self.percentile(namespace), None, None, {
                "type": "ModelReady", "status": False, "reason": "ModelLoadFailed",
                "message": f"AdvisorModel {ref.name!r}: {type(exc).__name__}: {exc}; using the percentile advisor"})
        if advisor is None:
            phase = (model.get("status") or {}).get("phase") or "Pending"
            return AdvisorChoice(await self.percentile(namespace), None, None, {
                "type": "ModelReady", "status": False, "reason": f"Model{phase}",
                "message": f"AdvisorModel {ref.name!r} has no trained model yet (phase {phase}); using the percentile advisor"})
        return AdvisorChoice(advisor, advisor, version, {
            "type": "ModelReady", "status": True, "reason": "ModelLoaded",
            "message": f"AdvisorModel {ref.name!r} version {version}"})


def _refreshed(model_dir: Path, version: str, runs_dir: Path, previous: Any) -> Any:
    """The stored model ``version``, brought up to date with the history under ``runs_dir``
    (see the module docstring); ``previous`` is the copy in use, whose adaptive offset goes on.
    A model that does not load raises; a history that cannot be read or applied leaves the
    model as stored (or ``previous``), and the operator keeps sizing."""
    import copy
    import logging

    from scalable.advising.adaptive_checkpoint import load_checkpoint, save_checkpoint
    from scalable.advising.learned_advisor import LearnedAdvisor
    from scalable.telemetry.loader import load_tasks

    advisor = LearnedAdvisor.load(model_dir, MODEL_NAME, version)
    if previous is not None and getattr(previous, "adaptive_", None) is not None:
        advisor.adaptive_ = copy.deepcopy(previous.adaptive_)
        advisor.observed_until_ = previous.observed_until_
    else:
        # a restart (or another replica taking over): go on from the offset as last applied
        found = load_checkpoint(model_dir, MODEL_NAME, version)
        if found is not None:
            advisor.adaptive_, advisor.observed_until_ = found
    log = logging.getLogger("scalable.controller.training")
    try:
        frame = load_tasks(runs_dir).frame
        if len(frame):
            advisor.update(frame)
    except Exception as exc:  # noqa: BLE001 - serving the stored model beats serving none
        log.warning("model %s %s not refreshed from %s: %s: %s", model_dir, version, runs_dir, type(exc).__name__, exc)
        return previous if previous is not None else LearnedAdvisor.load(model_dir, MODEL_NAME, version)
    try:
        save_checkpoint(model_dir, MODEL_NAME, version, advisor)
    except OSError as exc:  # a read-only or full volume: the offset still applies in memory
        log.warning("adaptive offset of %s %s not checkpointed: %s", model_dir, version, exc)
    return advisor


def model_dir_exists(root: TelemetryRoot, namespace: str, name: str) -> bool:
    return os.path.isdir(root.model_dir(namespace, name))
