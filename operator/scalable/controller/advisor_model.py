"""The reconcile loop of one AdvisorModel: decide when to train, train off the loop, report.

Training is due when the model was never trained for this spec generation, when
``retrainInterval`` has passed since the last training, or when at least
``newRecordThreshold`` task records arrived since, but never sooner than
:data:`~scalable.controller.training.MIN_RETRAIN_INTERVAL_S` after the last training (a spec
asking for less is clamped, and the ``RetrainInterval`` condition says so). Phases:

* ``Pending``: nothing trained yet, or waiting for the first training;
* ``Training``: a training process is running (the champion, if any, keeps serving);
* ``Ready``: a champion model serves ScalableWorkflows;
* ``InsufficientData``: no task has ``minHistory`` observations yet (and there is no champion);
* ``Failed``: the last training failed and there is no champion to fall back to.

With a champion, a failed or insufficient training leaves the phase ``Ready`` and says what
happened in ``lastError`` / ``decision`` and the ``Trained`` condition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pydantic

from scalable.controller.conditions import get_condition, merge_conditions, set_condition
from scalable.controller.resources import AdvisorModelSpec
from scalable.controller.runtime import Runtime
from scalable.controller.timestamps import parse_time, precise_time
from scalable.controller.training import MIN_RETRAIN_INTERVAL_S, parse_duration, read_champion
from scalable.controller.workflow import _either, _is_set

__all__ = ["AdvisorModelLoop", "count_records"]

log = logging.getLogger("scalable.controller.advisor_model")


def count_records(runs_dir: Any) -> int:
    """Task records under ``runs_dir`` (the loader's cache makes repeated counts cheap)."""
    from scalable.telemetry.loader import load_tasks

    return len(load_tasks(runs_dir))


def _quality_status(quality: dict[str, Any] | None) -> dict[str, Any]:
    memory = (quality or {}).get("memory") or {}
    duration = (quality or {}).get("duration") or {}
    return {
        "coverage": memory.get("coverage_measured"),
        "underProvisionRate": memory.get("under_provision_rate"),
        "slack": memory.get("slack"),
        "maeMemoryBytes": memory.get("mae_bytes"),
        "maeDurationSeconds": duration.get("mae_s"),
    }


class AdvisorModelLoop:
    def __init__(self, rt: Runtime, namespace: str, name: str) -> None:
        self.rt = rt
        self.namespace = namespace
        self.name = name
        self.errors = 0

    async def run(self, stopped: Any) -> None:
        wake = self.rt.wakeup("AdvisorModel", self.namespace, self.name)
        while not _is_set(stopped):
            delay = await self.iterate()
            if delay is None:
                return
            wake.clear()
            try:
                await asyncio.wait_for(_either(stopped, wake), timeout=delay)
            except asyncio.TimeoutError:
                pass

    async def iterate(self) -> float | None:
        rt = self.rt
        rt.metrics.reconciles.labels("AdvisorModel").inc()
        try:
            body = await rt.kube.get("AdvisorModel", self.namespace, self.name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                rt.metrics.forget_model(self.namespace, self.name)
                return None
            return await self._reconcile(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.errors += 1
            rt.metrics.reconcile_errors.labels("AdvisorModel", type(exc).__name__).inc()
            log.exception("reconcile of AdvisorModel %s/%s failed", self.namespace, self.name)
            return min(600.0, 10.0 * 2 ** min(self.errors, 6))

    async def _patch(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        await self.rt.kube.patch_status("AdvisorModel", self.namespace, self.name, status)

    async def _reconcile(self, body: dict[str, Any]) -> float:
        rt = self.rt
        now = time.time()
        generation = int(body["metadata"].get("generation") or 0)
        status = dict(body.get("status") or {})
        conditions = status.get("conditions") or []
        try:
            spec = AdvisorModelSpec.model_validate(body.get("spec") or {})
            interval = parse_duration(spec.retrainInterval)
        except (pydantic.ValidationError, ValueError) as exc:
            await self._patch(body, {"phase": "Failed", "lastError": str(exc)[:1000], "observedGeneration": generation,
                                     "conditions": set_condition(conditions, "Ready", False, "InvalidSpec", str(exc)[:1000], generation=generation)})
            return 300.0
        status["conditions"] = conditions = await self._report_interval(body, conditions, spec.retrainInterval, interval, generation)
        interval = max(interval, MIN_RETRAIN_INTERVAL_S)
        runs_dir = rt.root.runs_dir(self.namespace, create=True)
        model_dir = rt.root.model_dir(self.namespace, self.name, create=True)
        champion = await asyncio.to_thread(read_champion, model_dir)
        trained_at = parse_time(status.get("trainedAt"))
        rt.metrics.model_trained_at(self.namespace, self.name, _last_good_training(status, trained_at, champion))
        total = await asyncio.to_thread(count_records, runs_dir)
        new_records = total - int(status.get("recordsSeen") or 0)
        reason = None
        if trained_at is not None and now - trained_at < MIN_RETRAIN_INTERVAL_S:
            pass  # whatever asks for it (spec changes, new records), never sooner than the minimum after the last
        elif status.get("observedGeneration") != generation:
            reason = "the spec changed" if status.get("observedGeneration") is not None else "first training"
        elif trained_at is None:
            reason = "never trained"
        elif now - trained_at >= interval:
            reason = f"retrainInterval {spec.retrainInterval} passed"
        elif new_records >= spec.newRecordThreshold:
            reason = f"{new_records} new records (newRecordThreshold {spec.newRecordThreshold})"
        if reason is None and trained_at is not None and now - trained_at < MIN_RETRAIN_INTERVAL_S:
            return max(1.0, min(rt.config.training_check_interval_s, MIN_RETRAIN_INTERVAL_S - (now - trained_at)))
        if reason is None:
            if status.get("phase") == "InsufficientData" or (status.get("phase") in (None, "Pending") and champion is None):
                # no model yet: check for enough data again soon rather than waiting the full interval
                return rt.config.training_check_interval_s
            until = interval - (now - trained_at) if trained_at else interval
            return max(1.0, min(rt.config.training_check_interval_s, until))
        return await self._train(body, spec, generation, status, champion, reason, runs_dir, model_dir, total)

    async def _report_interval(self, body: dict[str, Any], conditions: list[dict[str, Any]], asked: str,
                               interval: float, generation: int) -> list[dict[str, Any]]:
        """The ``RetrainInterval`` condition: False (``BelowMinimum``) while the spec asks for less
        than the operator allows, which is then what applies; patched only when it changes."""
        if interval < MIN_RETRAIN_INTERVAL_S:
            wanted = ("False", "BelowMinimum", f"retrainInterval {asked} is below the operator's minimum of "
                      f"{MIN_RETRAIN_INTERVAL_S:g}s; trainings are at least {MIN_RETRAIN_INTERVAL_S:g}s apart")
        else:
            wanted = ("True", "AsRequested", f"retrains every {asked}, or sooner on new records, at least "
                      f"{MIN_RETRAIN_INTERVAL_S:g}s apart")
        current = get_condition(conditions, "RetrainInterval") or {}
        if (current.get("status"), current.get("reason"), current.get("message")) == wanted:
            return conditions
        updated = set_condition(conditions, "RetrainInterval", wanted[0], wanted[1], wanted[2], generation=generation)
        await self._patch(body, {"conditions": updated})
        return updated

    async def _train(self, body, spec, generation, status, champion, reason, runs_dir, model_dir, total) -> float:
        rt = self.rt
        conditions = status.get("conditions") or []
        await self._patch(body, {"phase": "Training" if champion is None else status.get("phase", "Ready"),
                                 "conditions": set_condition(conditions, "Trained", "Unknown", "Training", f"training: {reason}")})
        request = {
            "runs_dir": str(runs_dir), "model_dir": str(model_dir), "model_type": spec.modelType,
            "coverage": spec.coverage, "min_history": spec.minHistory, "confidence_threshold": spec.confidenceThreshold,
            "workflows": list(spec.telemetry.workflows), "tasks": list(spec.telemetry.tasks),
            "max_records": spec.telemetry.maxRecords,
        }
        started = time.monotonic()
        try:
            result = await rt.trainer.train(request, timeout=rt.config.training_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - training failures are reported in status
            rt.metrics.trainings.labels(self.namespace, "failed").inc()
            message = f"{type(exc).__name__}: {exc}"[:1000] or type(exc).__name__
            phase = "Ready" if champion else "Failed"
            conditions = merge_conditions(conditions, [
                {"type": "Trained", "status": False, "reason": "TrainingFailed", "message": message},
                {"type": "Ready", "status": bool(champion), "reason": "ChampionServing" if champion else "TrainingFailed",
                 "message": f"version {champion['version']} keeps serving" if champion else message},
            ], generation=generation)
            await self._patch(body, {"phase": phase, "lastError": message, "observedGeneration": generation,
                                     "trainedAt": precise_time(time.time()), "recordsSeen": total, "conditions": conditions})
            await rt.kube.event(body, "TrainingFailed", message, "Warning")
            return max(60.0, rt.config.training_check_interval_s)
        finally:
            rt.metrics.training_seconds.labels(self.namespace).observe(time.monotonic() - started)
        outcome = result["outcome"]
        rt.metrics.trainings.labels(self.namespace, outcome).inc()
        new_status: dict[str, Any] = {"observedGeneration": generation, "trainedAt": precise_time(time.time()),
                                      "runs": result["runs"], "records": result["records"], "recordsSeen": total,
                                      "lastError": None}
        if outcome == "insufficient":
            phase = "Ready" if champion else "InsufficientData"
            new_status.update(phase=phase, decision=result["message"])
            updates = [{"type": "Trained", "status": False, "reason": "InsufficientData", "message": result["message"]},
                       {"type": "Ready", "status": bool(champion), "reason": "ChampionServing" if champion else "InsufficientData",
                        "message": f"version {champion['version']} keeps serving" if champion else result["message"]}]
            await rt.kube.event(body, "InsufficientData", result["message"], "Normal")
        else:
            serving = result["champion"]
            new_status.update(
                phase="Ready", modelVersion=serving["version"], decision=result["message"],
                quality=_quality_status(serving.get("quality")),
                coverage=_coverage_text(serving.get("quality")),
            )
            updates = [{"type": "Trained", "status": True, "reason": "Promoted" if outcome == "promoted" else "ChampionKept",
                        "message": f"challenger {result['challenger']}: {result['message']}"},
                       {"type": "Ready", "status": True, "reason": "ChampionServing", "message": f"version {serving['version']} serves"}]
            await rt.kube.event(body, "Promoted" if outcome == "promoted" else "ChampionKept",
                                f"trained on {result['records']} records of {result['runs']} runs in {result['seconds']:.1f}s "
                                f"({reason}): {result['message']}", "Normal")
        new_status["conditions"] = merge_conditions(conditions, updates, generation=generation)
        await self._patch(body, new_status)
        for key in [k for k in rt.wakeups if k[0] == "ScalableWorkflow" and k[1] == self.namespace]:
            rt.wakeups[key].set()
        return rt.config.training_check_interval_s


def _last_good_training(status: dict[str, Any], trained_at: float | None, champion: dict[str, Any] | None) -> float | None:
    """When a model was last trained and left serving: trainedAt while the Trained condition is
    True, else (training failing or short of data) the serving model's own training time."""
    trained = next((c for c in status.get("conditions") or [] if c.get("type") == "Trained"), None)
    if trained is not None and trained.get("status") == "True" and trained_at is not None:
        return trained_at
    return float(champion["trained_at"]) if champion and champion.get("trained_at") is not None else None


def _coverage_text(quality: dict[str, Any] | None) -> str | None:
    memory = (quality or {}).get("memory") or {}
    measured, promised = memory.get("coverage_measured"), memory.get("coverage_promised")
    if measured is None:
        return None
    return f"{measured:.1%} (promised {promised:.0%})" if promised is not None else f"{measured:.1%}"
