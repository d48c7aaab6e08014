"""The telemetry record schema: what a run, a task, a worker sample and a scaling decision are.

Every record carries ``schema_version``; readers skip (and count) versions they do not know.
A task observation records what was *observed* (duration of execution, CPU seconds, peak
memory) and, separately, what the worker had or what was requested: advisors learn from the
former, never from the latter.
"""

from __future__ import annotations

import enum
import time
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

FeatureValue = Union[bool, int, float, str]
Name = Annotated[str, Field(min_length=1, max_length=253)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)

    schema_version: Literal[1] = SCHEMA_VERSION


class TaskState(str, enum.Enum):
    """How a task ended. ``oom_killed`` means the worker died of memory while running it."""

    succeeded = "succeeded"
    erred = "erred"
    oom_killed = "oom_killed"
    cancelled = "cancelled"


class Resources(BaseModel):
    """CPUs and memory bytes, as a worker had them or as a job requested them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float | None = Field(default=None, ge=0)
    memory_bytes: int | None = Field(default=None, ge=0)


class RunInfo(_Record):
    """``run.json``: one workflow run. ``finished_at`` is set when the run is finalised."""

    kind: Literal["run"] = "run"
    run_id: Name
    workflow: str = "default"
    source: str = Field(default="scalable", description="who wrote the run: scalable, operator, swf, sacct, ...")
    started_at: float = Field(default_factory=time.time, description="seconds since the epoch")
    finished_at: float | None = None
    host: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class TaskObservation(_Record):
    """One task execution as it was observed."""

    kind: Literal["task"] = "task"
    run_id: Name
    task: Name = Field(description="stable task name, e.g. the function's name")
    tag: str | None = Field(default=None, description="worker group the task ran on")
    key: str | None = Field(default=None, description="the Dask key or job id, for tracing only")
    input_features: dict[str, FeatureValue] = Field(default_factory=dict)
    submitted_at: float = Field(description="when the task was submitted (epoch seconds)")
    started_at: float | None = Field(default=None, description="when execution began")
    finished_at: float | None = Field(default=None, description="when execution ended")
    duration_s: float = Field(ge=0, description="execution time, not queue wait")
    cpu_seconds: float | None = Field(default=None, ge=0)
    peak_memory_bytes: int | None = Field(default=None, ge=0, description="observed peak while the task ran")
    worker_resources: Resources = Field(default_factory=Resources, description="what the worker had")
    requested: Resources = Field(default_factory=Resources, description="what the job asked for, where known")
    state: TaskState = TaskState.succeeded
    worker: str | None = None

    @field_validator("input_features")
    @classmethod
    def _finite_features(cls, value: dict[str, FeatureValue]) -> dict[str, FeatureValue]:
        for name, feature in value.items():
            if isinstance(feature, float) and feature != feature:
                raise ValueError(f"input feature {name!r} is NaN")
        return value

    @property
    def end_time(self) -> float:
        """When the observation became known: finished_at, else start (or submit) + duration."""
        if self.finished_at is not None:
            return self.finished_at
        return (self.started_at if self.started_at is not None else self.submitted_at) + self.duration_s


class WorkerObservation(_Record):
    """A sample of one worker: memory in use, tasks, resources."""

    kind: Literal["worker"] = "worker"
    run_id: Name
    time: float
    worker: str
    tag: str | None = None
    memory_bytes: int | None = Field(default=None, ge=0)
    cpu_fraction: float | None = Field(default=None, ge=0)
    tasks_executing: int | None = Field(default=None, ge=0)
    resources: Resources = Field(default_factory=Resources)


class ScalingDecisionRecord(_Record):
    """One decision of the scaler for one tag, with its reasoning."""

    kind: Literal["scaling_decision"] = "scaling_decision"
    run_id: Name
    time: float
    tag: str
    action: Literal["scale_up", "scale_down", "hold"]
    from_workers: int = Field(ge=0)
    to_workers: int = Field(ge=0)
    reason: str
    mode: Literal["predictive", "reactive", "hold"] = "reactive"
    predicted_load: float | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    queued: int | None = Field(default=None, ge=0)
    processing: int | None = Field(default=None, ge=0)
    utilisation: float | None = None


RECORD_TYPES: dict[str, type[_Record]] = {
    "run": RunInfo,
    "task": TaskObservation,
    "worker": WorkerObservation,
    "scaling_decision": ScalingDecisionRecord,
}

#: which JSONL file in a run directory holds which kind of record
RECORD_FILES: dict[str, str] = {
    "task": "tasks.jsonl",
    "worker": "workers.jsonl",
    "scaling_decision": "decisions.jsonl",
}
