"""The telemetry record schema: what a run, a task, a worker sample and a scaling decision are.

Every record carries ``schema_version``; readers skip (and count) versions they do not know.
A task observation records what was *observed* (duration of execution, CPU seconds, peak
memory) and, separately, what the worker had or what was requested: advisors learn from the
former, never from the latter.

Every number is finite and inside a sane range (the ``MAX_*`` constants below, defined here
once for the ingestion server, the loader and the importers): a pushed ``1e400`` or
``Infinity`` is refused by name instead of turning into an overflow or a NaN that stops the
advisors of a whole namespace later.
"""

from __future__ import annotations

import enum
import math
import time
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

#: most bytes of memory any record may state (1 PiB: no node of this decade has more)
MAX_BYTES = 2**50
#: longest duration in seconds (ten years)
MAX_SECONDS = 10 * 365.25 * 86400
#: most CPUs a worker or a request may state
MAX_CPUS = 100_000
#: most CPU seconds of one task: every CPU busy for the longest duration
MAX_CPU_SECONDS = MAX_SECONDS * MAX_CPUS
#: latest time stamp, in seconds since the epoch (the end of year 9999); none is negative
MAX_EPOCH_S = 253_402_300_799.0
#: most tasks, workers or queued items a count may state
MAX_COUNT = 10**9
#: largest magnitude of a number a record may carry without a stricter bound (a load, a
#: utilisation, a numeric input feature): what an int64 holds, far below float overflow
MAX_MAGNITUDE = 2**63

FeatureValue = Union[bool, int, float, str]
Name = Annotated[str, Field(min_length=1, max_length=253)]


Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
EpochSeconds = Annotated[float, Field(ge=0, le=MAX_EPOCH_S)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Magnitude = Annotated[float, Field(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True, allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION


class TaskState(str, enum.Enum):
    """How a task ended. ``oom_killed`` means the worker died of memory while running it."""

    succeeded = "succeeded"
    erred = "erred"
    oom_killed = "oom_killed"
    cancelled = "cancelled"


class Resources(BaseModel):
    """CPUs and memory bytes, as a worker had them or as a job requested them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    cpus: float | None = Field(default=None, ge=0, le=MAX_CPUS)
    memory_bytes: Bytes | None = None


class RunInfo(_Record):
    """``run.json``: one workflow run. ``finished_at`` is set when the run is finalised."""

    kind: Literal["run"] = "run"
    run_id: Name
    workflow: str = "default"
    source: str = Field(default="scalable", description="who wrote the run: scalable, operator, swf, sacct, ...")
    started_at: EpochSeconds = Field(default_factory=time.time, description="seconds since the epoch")
    finished_at: EpochSeconds | None = None
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
    submitted_at: EpochSeconds = Field(description="when the task was submitted (epoch seconds)")
    started_at: EpochSeconds | None = Field(default=None, description="when execution began")
    finished_at: EpochSeconds | None = Field(default=None, description="when execution ended")
    duration_s: Seconds = Field(description="execution time, not queue wait")
    cpu_seconds: float | None = Field(default=None, ge=0, le=MAX_CPU_SECONDS)
    peak_memory_bytes: Bytes | None = Field(default=None, description="observed peak while the task ran")
    worker_resources: Resources = Field(default_factory=Resources, description="what the worker had")
    requested: Resources = Field(default_factory=Resources, description="what the job asked for, where known")
    state: TaskState = TaskState.succeeded
    worker: str | None = None

    @field_validator("input_features")
    @classmethod
    def _finite_features(cls, value: dict[str, FeatureValue]) -> dict[str, FeatureValue]:
        for name, feature in value.items():
            if isinstance(feature, bool) or isinstance(feature, str):
                continue
            if isinstance(feature, float) and not math.isfinite(feature):
                raise ValueError(f"input feature {name!r} is {feature!r}: numbers must be finite")
            if abs(feature) > MAX_MAGNITUDE:
                raise ValueError(f"input feature {name!r} is beyond +-2**63")
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
    time: EpochSeconds
    worker: str
    tag: str | None = None
    memory_bytes: Bytes | None = None
    cpu_fraction: float | None = Field(default=None, ge=0, le=MAX_CPUS)
    tasks_executing: Count | None = None
    resources: Resources = Field(default_factory=Resources)


class ScalingDecisionRecord(_Record):
    """One decision of the scaler for one tag, with its reasoning."""

    kind: Literal["scaling_decision"] = "scaling_decision"
    run_id: Name
    time: EpochSeconds
    tag: str
    action: Literal["scale_up", "scale_down", "hold"]
    from_workers: Count
    to_workers: Count
    reason: str
    mode: Literal["predictive", "reactive", "hold"] = "reactive"
    predicted_load: Magnitude | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    queued: Count | None = None
    processing: Count | None = None
    utilisation: Magnitude | None = None


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
