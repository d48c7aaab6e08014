"""ScalableSession: run a workflow on Dask, record every task, and scale its worker groups.

::

    session = ScalableSession.from_yaml("./scalable.yaml", target="local")
    client = session.start()
    futures = [client.submit(run_demeter_scenario, i, tag="demeter") for i in range(100)]
    results = client.gather(futures)
    session.close()

A tag names a worker group of scalable.yaml; a task submitted with it runs only on that
group's workers. While the session runs, a background thread reads the queue state of
each group from the scheduler every ``poll_interval_seconds``, asks the AdaptiveScaler,
starts workers and retires idle ones, and records each decision. Every task is recorded as
it finishes (:mod:`scalable.telemetry.dask_plugin`) in a run of the telemetry store, so
the advisors can train on it at once and a crash loses nothing already recorded.

When ``$SCALABLE_TELEMETRY_URL`` or scalable.yaml's ``telemetry.push`` names the operator's
ingestion endpoint, ``close()`` pushes the run there after Dask has stopped
(:mod:`scalable.session.telemetry_push`): spooled first, retried with backoff for
``deadline_seconds``, and what is not delivered by then waits in the spool for the next session.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dask.base import tokenize
from distributed import Client, Future

from scalable.scaling.decision import ScalingDecision
from scalable.scaling.history import ScalingHistory
from scalable.scaling.scaler import AdaptiveScaler
from scalable.session.guard import refuse_if_reimported
from scalable.session.manifest import Manifest, load_manifest, resource_name
from scalable.session.queue import queue_state
from scalable.session.telemetry_push import PushTarget, push_run, resolve_push_target
from scalable.telemetry.dask_plugin import (
    LOST_TOPIC,
    TASK_TOPIC,
    WORKER_TOPIC,
    ProbedTask,
    TelemetryCollector,
    KernelOOMNannyPlugin,
    TelemetrySchedulerPlugin,
    capture_features,
    flush_lost_workers,
    sample_workers,
    task_name,
)
from scalable.telemetry.store import RunStore, RunWriter

__all__ = ["ScalableSession", "ScalableClient"]

logger = logging.getLogger(__name__)

_AUTO = "auto"
_PENDING_LIMIT = 500
#: decisions kept in memory for inspection; all of them are in the run's telemetry
_DECISIONS_KEPT = 1000


class ScalableClient:
    """A Dask client that knows worker groups: ``submit``/``map`` take a ``tag``.

    Everything else (``scheduler_info``, ``cancel``, ...) is the Dask client's own.
    Closing it closes the session.
    """

    def __init__(self, session: "ScalableSession", client: Client) -> None:
        self._session = session
        self.dask = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dask, name)

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        tag: str | None = None,
        key: str | None = None,
        pure: bool = True,
        input_features: Mapping[str, Any] | None = None,
        retries: int | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker of group ``tag`` (any worker without one).

        ``input_features`` adds to (and overrides) the features captured from the scalar
        arguments; ``key`` and ``pure`` work as in Dask (keys are named after the function).
        """
        session = self._session
        resources = None
        if tag is not None:
            if tag not in session.tags:
                raise ValueError(f"unknown tag {tag!r}: scalable.yaml has worker groups {', '.join(sorted(session.tags))}")
            resources = {resource_name(tag): 1}
        name = task_name(fn)
        features = capture_features(fn, args, kwargs)
        if input_features:
            features.update(input_features)
        if key is None:
            key = f"{name}-{tokenize(fn, args, kwargs, tag) if pure else uuid.uuid4().hex}"
        if session.collector is not None:
            session.collector.register(key, name, tag, features, time.time())
        return self.dask.submit(
            ProbedTask(fn), *args, key=key, pure=False, resources=resources, retries=retries, priority=priority, **kwargs
        )

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], tag: str | None = None, **kwargs: Any) -> list[Future]:
        """``submit`` for each tuple of ``zip(*iterables)``; keyword arguments go to every call."""
        return [self.submit(fn, *args, tag=tag, **kwargs) for args in zip(*iterables)]

    def gather(self, futures: Any, errors: str = "raise") -> Any:
        return self.dask.gather(futures, errors=errors)

    def cancel(self, futures: Any, **kwargs: Any) -> Any:
        """Cancel as Dask does; the scaler stops counting the tasks as pending work."""
        items = futures if isinstance(futures, (list, tuple, set)) else [futures]
        if self._session.collector is not None:
            for future in items:
                self._session.collector.forget(str(future.key))
        return self.dask.cancel(futures, **kwargs)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "ScalableClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScalableSession:
    """A workflow run on Dask with its worker groups, scaler and telemetry.

    ``advisor`` is ``"auto"`` (a LearnedAdvisor trained on the telemetry directory when
    scalable.yaml asks for predictive scaling with the learned advisor), ``None``, or an
    advisor object. ``runs_dir`` overrides the telemetry directory of scalable.yaml.

    ``scaler`` is a scaler built elsewhere, such as the operator's ``make_scaler`` from a
    ScalableWorkflow, so that a benchmark or a test measures the scaler the operator runs:
    start() drives it, with the advisor it carries, instead of building one from the
    manifest's scaling settings (the manifest still gives the worker groups and the poll
    interval).
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        target: str | None = None,
        base_dir: str | Path = ".",
        advisor: Any = _AUTO,
        runs_dir: str | Path | None = None,
        scaler: AdaptiveScaler | None = None,
    ) -> None:
        if scaler is not None and advisor is not _AUTO:
            raise ValueError("a given scaler carries its own advisor; pass one or the other")
        self.manifest = manifest
        self.target_name = target or manifest.target
        if self.target_name not in ("local", "kubernetes"):
            raise ValueError(f"target must be 'local' or 'kubernetes', not {self.target_name!r}")
        base = Path(base_dir)
        self.base_dir = base
        self.runs_dir = Path(runs_dir) if runs_dir is not None else base / manifest.telemetry.dir
        self.tags = [g.tag for g in manifest.worker_groups]
        self._advisor_arg = advisor
        self.advisor: Any = scaler.advisor if scaler is not None else None
        self.advisor_note = ""
        self.scaler: AdaptiveScaler | None = scaler
        self.history = ScalingHistory()
        self.collector: TelemetryCollector | None = None
        self.writer: RunWriter | None = None
        self.client: ScalableClient | None = None
        self.decisions: deque[ScalingDecision] = deque(maxlen=_DECISIONS_KEPT)
        self._target: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recorded: dict[str, tuple[str, str]] = {}
        self._closed = False
        self.push_target: PushTarget | None = None
        #: what close() delivered to the operator (a DrainReport), when it pushes
        self.push_report: Any = None

    @classmethod
    def from_yaml(cls, path: str | Path, target: str | None = None, **kwargs: Any) -> "ScalableSession":
        """A session from scalable.yaml; relative paths in it are relative to the file."""
        path = Path(path)
        return cls(load_manifest(path), target=target, base_dir=path.parent, **kwargs)

    @property
    def run_id(self) -> str | None:
        return self.writer.run_id if self.writer is not None else None

    def _make_target(self) -> Any:
        if self.target_name == "local":
            from scalable.session.local import LocalTarget

            return LocalTarget(self.manifest)
        from scalable.session.kubernetes import KubernetesTarget

        return KubernetesTarget(self.manifest)

    def _load_advisor(self) -> Any:
        scaling = self.manifest.scaling
        if self._advisor_arg is not _AUTO:
            return self._advisor_arg
        if scaling.mode != "predictive" or scaling.advisor == "none":
            return None
        try:
            from scalable.advising.learned_advisor import LearnedAdvisor

            return LearnedAdvisor.from_history(self.runs_dir)
        except Exception as exc:  # noqa: BLE001 - no history or no model: reactive, and say so
            self.advisor_note = f"no advisor ({type(exc).__name__}: {exc}); scaling reactively"
            logger.warning("scalable: %s", self.advisor_note)
            return None

    def start(self) -> ScalableClient:
        """Start the cluster, the telemetry run and the scaler; return the client."""
        refuse_if_reimported()
        if self.client is not None:
            return self.client
        scaling = self.manifest.scaling
        if self.manifest.telemetry.enabled:
            # a bad destination (no NAMESPACE/NAME, a token over plain http) fails here, not at close
            self.push_target = resolve_push_target(self.manifest, self.runs_dir, self.base_dir)
            if self.push_target is not None:
                self.push_target.client().close()
        if self.scaler is None and scaling.mode != "off":
            self.advisor = self._load_advisor()
            self.scaler = AdaptiveScaler(
                advisor=self.advisor if scaling.mode == "predictive" else None,
                config=self.manifest.scaler_config(self.target_name),
            )
        self._target = self._make_target()
        dask_client = self._target.start()
        try:
            if self.manifest.telemetry.enabled:
                self.writer = RunStore(self.runs_dir).open_run(
                    workflow=self.manifest.workflow,
                    source="scalable",
                    host=socket.gethostname(),
                    labels={"target": self.target_name},
                )
                self.collector = TelemetryCollector(self.writer.run_id, self.writer.append)
                self.collector.worker_tags = {resource_name(tag): tag for tag in self.tags}
                dask_client.subscribe_topic(TASK_TOPIC, self.collector.handle)
                dask_client.subscribe_topic(LOST_TOPIC, self.collector.handle)
                dask_client.subscribe_topic(WORKER_TOPIC, self.collector.handle_worker)
                dask_client.register_plugin(TelemetrySchedulerPlugin())
                dask_client.register_plugin(KernelOOMNannyPlugin())
        except BaseException:
            dask_client.close()
            self._target.close()
            raise
        self.client = ScalableClient(self, dask_client)
        if self.scaler is not None:
            self._thread = threading.Thread(target=self._scale_loop, name="scalable-scaler", daemon=True)
            self._thread.start()
        return self.client

    def _scale_loop(self) -> None:
        interval = self.manifest.scaling.poll_interval_seconds
        while not self._stop.wait(interval):
            try:
                self.scale_once()
            except Exception:  # noqa: BLE001 - a failed poll must not end the session
                if not self._stop.is_set():
                    logger.warning("scalable: scaling poll failed", exc_info=True)

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
        """The queue state of every group as the scaler sees it, and the idle workers' names."""
        assert self.client is not None
        state = self.client.dask.run_on_scheduler(
            queue_state, resources={tag: resource_name(tag) for tag in self.tags}
        )
        pending = self.collector.pending() if self.collector is not None else {}
        submitted = self.collector.submitted_per_tag if self.collector is not None else {}
        snapshot, idle = {}, {}
        for group in self.manifest.worker_groups:
            tag = group.tag
            tag_state = state[tag]
            idle[tag] = tag_state["idle"]
            snapshot[tag] = {
                "queued": tag_state["queued"],
                "processing": tag_state["processing"],
                "workers": len(self._target.workers(tag)),
                "threads_per_worker": group.threads,
                "idle_workers": len(tag_state["idle"]),
                "submitted": submitted.get(tag, 0),
                "pending": pending.get(tag, [])[:_PENDING_LIMIT],
            }
        return snapshot, idle

    def scale_once(self, now: float | None = None, snapshot: Mapping[str, Mapping[str, Any]] | None = None) -> ScalingDecision:
        """One poll: read the queue state, decide, apply, commit what was applied, record.

        ``snapshot`` replaces the queue state read from the scheduler (a replay of recorded
        states, or a test); the idle workers a scale-down may retire are still the scheduler's.
        Every change is recorded; a hold only when it follows a change or another mode,
        so that a quiet session does not write a decision per poll.
        """
        assert self.scaler is not None and self.client is not None
        observed, idle = self.snapshot()
        snapshot = observed if snapshot is None else snapshot
        decision = self.scaler.evaluate(snapshot, now=now, history=self.history)
        applied = []
        for tag in decision.changes:
            tag_decision = decision.tags[tag]
            try:
                if tag_decision.action == "scale_up":
                    self._target.scale_up(tag, tag_decision.to_workers - tag_decision.from_workers)
                else:
                    self._target.retire(self.client.dask, tag, idle[tag], tag_decision.retire)
            except Exception:  # noqa: BLE001 - not applied: no cooldown starts, the next poll decides again
                logger.warning("scalable: could not apply %s for tag %r", tag_decision.action, tag, exc_info=True)
                continue
            applied.append(tag)
        self.history = decision.commit(applied)
        self.decisions.append(decision)
        if self.writer is not None:
            for tag_decision in decision.tags.values():
                reason = tag_decision.reason
                if self.advisor_note and tag_decision.mode == "reactive":
                    reason = f"{reason} ({self.advisor_note})"
                signature = (tag_decision.action, tag_decision.mode)
                if tag_decision.action == "hold" and self._last_recorded.get(tag_decision.tag) == signature:
                    continue
                self._last_recorded[tag_decision.tag] = signature
                record = tag_decision.to_record(self.writer.run_id, decision.time).model_copy(update={"reason": reason})
                self.writer.append(record)
        return decision

    def close(self) -> None:
        """Stop scaling, record what the event stream still holds, finalise the run, stop Dask."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            if self.client is not None and self.collector is not None:
                try:
                    self.client.dask.run_on_scheduler(flush_lost_workers)
                    self.client.dask.run_on_scheduler(sample_workers)
                    topics = (TASK_TOPIC, LOST_TOPIC, WORKER_TOPIC)
                    for topic in topics:
                        self.client.dask.unsubscribe_topic(topic)
                    events = {topic: self.client.dask.get_events(topic) for topic in topics}
                    self.collector.replay(events)
                except Exception:  # noqa: BLE001 - what was recorded live stays recorded
                    logger.warning("scalable: could not replay telemetry events at close", exc_info=True)
            if self.writer is not None and self.collector is not None:
                self.writer.close(labels={
                    "target": self.target_name, "tasks_recorded": str(self.collector.recorded),
                    "worker_samples_recorded": str(self.collector.workers_recorded),
                })
        finally:
            if self.client is not None:
                self.client.dask.close()
            if self._target is not None:
                self._target.close()
        self._push()

    def _push(self) -> None:
        """Deliver the run to the operator; never raises (what is not delivered stays spooled)."""
        if self.push_target is None or self.writer is None:
            return
        target = self.push_target
        try:
            report = self.push_report = push_run(target, self.writer.path)
        except Exception as exc:  # noqa: BLE001 - the run is recorded locally either way
            logger.warning("scalable: could not push run %s to %s: %s", self.run_id, target.url, exc)
            return
        where = f"{target.url} ({target.namespace}/{target.name})"
        if report.complete and not report.failed:
            logger.info("scalable: pushed run %s to %s: %d records new, %d there already",
                        self.run_id, where, report.accepted, report.duplicates)
        else:
            logger.warning("scalable: run %s: %d batches delivered to %s, %d refused, %d wait in %s (%s)",
                           self.run_id, report.sent, where, len(report.failed), report.remaining,
                           target.spool().dir, report.stopped or (report.failed[0][1] if report.failed else "busy"))

    def __enter__(self) -> "ScalableSession":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
