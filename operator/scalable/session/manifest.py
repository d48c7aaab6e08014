"""scalable.yaml: the worker groups of a workflow, how they scale, where telemetry goes.

The manifest is validated by pydantic; a mistake is reported as
``<file>: <field>: <what is wrong and what is allowed>``, one line per mistake, so a user
can fix the file without reading this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scalable.scaling.config import DEFAULTS, LOCAL_WORKER_STARTUP_SECONDS, ScalerConfig
from scalable.units import QuantityError, parse_cpu, parse_memory

__all__ = ["Manifest", "ManifestError", "WorkerGroup", "load_manifest", "INIT_TEMPLATE", "resource_name"]

_TAG_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def resource_name(tag: str) -> str:
    """The Dask worker resource that pins tasks of ``tag`` to its group's workers."""
    return f"tag-{tag}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkerBounds(_Model):
    min: int = Field(default=0, ge=0, description="fewest workers the group keeps")
    max: int = Field(default=4, ge=1, description="most workers the group may have")

    @model_validator(mode="after")
    def _ordered(self) -> "WorkerBounds":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class WorkerGroup(_Model):
    """Workers that run the tasks submitted with this ``tag``."""

    tag: str = Field(pattern=_TAG_PATTERN, max_length=50, description="lower-case letters, digits and '-'")
    workers: WorkerBounds = Field(default_factory=WorkerBounds)
    threads: int = Field(default=1, ge=1, le=256, description="threads per worker")
    cpus: float = Field(default=1.0, gt=0, description="CPUs per worker, e.g. 2 or 500m")
    memory: int = Field(default=2 * 1024**3, gt=0, description="memory per worker, e.g. 4Gi")

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus(cls, value: Any) -> float:
        try:
            return parse_cpu(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        try:
            return parse_memory(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None


class ScalingSettings(_Model):
    """How the groups follow the queue; the defaults are the library's (ScalerConfig)."""

    mode: Literal["predictive", "reactive", "off"] = "predictive"
    advisor: Literal["learned", "none"] = Field(
        default="learned", description="learned: train a LearnedAdvisor on the telemetry dir at start"
    )
    poll_interval_seconds: float = Field(default=2.0, gt=0, le=3600)
    scale_up_threshold: float = Field(default=DEFAULTS.scale_up_threshold, gt=0)
    scale_down_threshold: float = Field(default=DEFAULTS.scale_down_threshold, gt=0)
    target_utilisation: float | None = Field(default=None, gt=0, description="default: midway between the thresholds")
    cooldown_seconds: float = Field(default=DEFAULTS.cooldown_seconds, ge=0)
    horizon_seconds: float | None = Field(
        default=None, gt=0, description="default: cooldown_seconds + worker_startup_seconds"
    )
    worker_startup_seconds: float | None = Field(
        default=None, ge=0, le=3600,
        description=f"how long a new worker takes to join; default {LOCAL_WORKER_STARTUP_SECONDS:g} for the local target, "
        f"{DEFAULTS.worker_startup_seconds:g} for kubernetes",
    )
    min_confidence: float = Field(default=DEFAULTS.min_confidence, ge=0, le=1)
    max_scale_up_step: int | None = Field(default=None, ge=1, description="default: unlimited")
    max_scale_down_step: int = Field(default=DEFAULTS.max_scale_down_step, ge=1)

    @model_validator(mode="after")
    def _thresholds(self) -> "ScalingSettings":
        if self.scale_down_threshold >= self.scale_up_threshold:
            raise ValueError(
                f"scale_down_threshold ({self.scale_down_threshold}) must be below scale_up_threshold ({self.scale_up_threshold})"
            )
        if self.target_utilisation is not None and not self.scale_down_threshold <= self.target_utilisation <= self.scale_up_threshold:
            raise ValueError(
                f"target_utilisation ({self.target_utilisation}) must lie between scale_down_threshold and scale_up_threshold"
            )
        return self


class PushSettings(_Model):
    """Push each run to the operator's ingestion endpoint when the session closes (at least
    once: what it cannot deliver waits in the spool). ``$SCALABLE_TELEMETRY_URL`` and the other
    ``$SCALABLE_TELEMETRY_*`` variables override these."""

    url: str | None = Field(default=None, pattern=r"^https?://", description="http(s)://operator:8081; none: no push")
    workflow: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$",
        description="NAMESPACE/NAME of the ScalableWorkflow; default: the pod's namespace "
        "(or kubernetes.namespace) and the manifest's workflow",
    )
    token_file: str | None = Field(default=None, description="default: the pod's ServiceAccount token")
    ca_file: str | None = Field(default=None, description="CA bundle of the operator's certificate (https)")
    allow_insecure_http: bool = Field(default=False, description="send the token over plain http to a non-loopback host")
    spool_dir: str | None = Field(default=None, description="default: spool next to the runs directory")
    deadline_seconds: float = Field(default=30.0, ge=0, le=3600, description="how long close() keeps retrying")


class TelemetrySettings(_Model):
    enabled: bool = True
    dir: str = Field(default="./.scalable/runs", description="runs directory, relative to scalable.yaml")
    push: PushSettings = Field(default_factory=PushSettings)


class KubernetesSettings(_Model):
    cluster: str | None = Field(default=None, description="name of an existing DaskCluster, or of the one to create")
    namespace: str = "default"
    create: bool = Field(default=False, description="create the DaskCluster if it does not exist")
    image: str = "ghcr.io/dask/dask:latest"


class Manifest(_Model):
    version: Literal[1] = 1
    workflow: str = Field(default="default", min_length=1, max_length=100)
    target: Literal["local", "kubernetes"] = "local"
    worker_groups: list[WorkerGroup] = Field(min_length=1)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @model_validator(mode="after")
    def _unique_tags(self) -> "Manifest":
        tags = [g.tag for g in self.worker_groups]
        duplicates = sorted({t for t in tags if tags.count(t) > 1})
        if duplicates:
            raise ValueError(f"worker group tags must be unique; repeated: {', '.join(duplicates)}")
        return self

    def scaler_config(self, target: str | None = None) -> ScalerConfig:
        """The one mapping of this manifest onto the library's scaler configuration.

        ``target`` ("local" or "kubernetes", default the manifest's) chooses the default
        worker start-up time: a local process's or a pod's.
        """
        s = self.scaling
        startup = s.worker_startup_seconds
        if startup is None:
            local = (target or self.target) == "local"
            startup = LOCAL_WORKER_STARTUP_SECONDS if local else DEFAULTS.worker_startup_seconds
        return ScalerConfig(
            min_workers={g.tag: g.workers.min for g in self.worker_groups},
            max_workers={g.tag: g.workers.max for g in self.worker_groups},
            scale_up_threshold=s.scale_up_threshold,
            scale_down_threshold=s.scale_down_threshold,
            target_utilisation=s.target_utilisation,
            cooldown_seconds=s.cooldown_seconds,
            worker_startup_seconds=startup,
            horizon_seconds=s.horizon_seconds,
            min_confidence=s.min_confidence,
            max_scale_up_step=s.max_scale_up_step,
            max_scale_down_step=s.max_scale_down_step,
        )

    def group(self, tag: str) -> WorkerGroup:
        for group in self.worker_groups:
            if group.tag == tag:
                return group
        raise KeyError(tag)


class ManifestError(ValueError):
    """scalable.yaml is missing, not YAML, or not a valid manifest; the message says where."""


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate ``path``; raise :class:`ManifestError` naming file and fields."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file; `scalable init` writes one") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping with worker_groups, scaling, telemetry; got {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            lines.append(f"{path}: {_location(error['loc'])}: {message}")
        raise ManifestError("\n".join(lines)) from None


INIT_TEMPLATE = """\
# scalable.yaml: how `ScalableSession.from_yaml("./scalable.yaml")` runs your workflow.
# Submit a task to a group with its tag: client.submit(run_demeter_scenario, i, tag="demeter").
version: 1
workflow: demeter-sweep          # the name runs of this workflow are recorded under

# local: a Dask LocalCluster on this machine. kubernetes: a DaskCluster (see below).
target: local

worker_groups:
  - tag: demeter                 # lower-case letters, digits and '-'
    workers:
      min: 1                     # the scaler never goes below ...
      max: 4                     # ... or above these
    threads: 1                   # threads per worker
    cpus: 1                      # per worker: 2, 0.5 or 500m
    memory: 2Gi                  # per worker: 512Mi, 4Gi, 4G or bytes; the worker restarts above it

scaling:
  mode: predictive               # predictive | reactive | off
  advisor: learned               # learned: train on the telemetry below at start; none: reactive only
  poll_interval_seconds: 2
  scale_up_threshold: 0.8        # utilisation = tasks in flight / (workers x threads)
  scale_down_threshold: 0.3
  cooldown_seconds: 60           # per group, from the last applied change (a scale-up may follow a scale-down)
  # worker_startup_seconds: 5    # how long a new worker takes to join (default 5 local, 30 kubernetes)
  # horizon_seconds: 65          # predictive look-ahead; default the cooldown plus a worker's start-up
  min_confidence: 0.5            # below it the scaler is reactive and says so
  # max_scale_up_step: 4         # workers added per decision (default: as many as the queue needs)
  max_scale_down_step: 1         # idle workers retired per decision

telemetry:
  enabled: true
  dir: ./.scalable/runs          # relative to this file; advisors train on it
  # push:                        # send each run to the operator when the session closes
  #   url: https://scalable-operator.scalable-system.svc:8081   # or $SCALABLE_TELEMETRY_URL
  #   workflow: default/demeter-sweep   # NAMESPACE/NAME of the ScalableWorkflow
  #   ca_file: /etc/scalable/ca.crt     # the operator's CA; in a pod the ServiceAccount token is sent

kubernetes:                      # used with target: kubernetes
  cluster: demeter               # an existing DaskCluster, or the one to create
  namespace: default
  create: false
  image: ghcr.io/dask/dask:latest
"""
