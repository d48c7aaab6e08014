"""The custom resources AdvisorModel and ScalableWorkflow, as pydantic models.

These models are the single source of truth: the CRD YAML under ``crds/`` is generated from
them (``make crds``), and the operator parses specs with them. Field names are camelCase as
Kubernetes users expect; cross-field rules the API server enforces are declared with
``x-kubernetes-validations`` (CEL) so invalid objects are refused at ``kubectl apply`` time.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scalable.advising import defaults as advisor_defaults
from scalable.controller.quantities import quantity
from scalable.controller.scrape_labels import SCOPE_MATCHERS
from scalable.scaling.config import DEFAULTS as SCALER_DEFAULTS
from scalable.scaling.config import ScalerConfig


GROUP = "scalable.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Quantity = Annotated[
    str,
    Field(
        pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$",
        max_length=32,
        json_schema_extra={"x-kubernetes-validations": [{"rule": "isQuantity(self)", "message": "must be a Kubernetes quantity such as 500m, 2, 512Mi or 16Gi"}]},
    ),
]
DNSName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
Duration = Annotated[str, Field(pattern=r"^([0-9]+(\.[0-9]+)?(s|m|h))+$", max_length=32)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=True)


# --- shared -----------------------------------------------------------------------------


class Condition(_Spec):
    """The Kubernetes condition shape (metav1.Condition)."""

    type: str
    status: str = Field(json_schema_extra={"enum": ["True", "False", "Unknown"]})
    reason: str = ""
    message: str = ""
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


# --- AdvisorModel ------------------------------------------------------------------------


class ModelType(str, enum.Enum):
    gradient_boosting = "gradient_boosting"
    random_forest = "random_forest"
    quantile_regression = "quantile_regression"


class Target(str, enum.Enum):
    memory = "memory"
    cpus = "cpus"
    duration = "duration"


class TelemetrySource(_Spec):
    """Which telemetry on the operator's volume trains this model (always within its namespace)."""

    workflows: list[DNSName] = Field(
        default_factory=list,
        description="ScalableWorkflows whose runs train the model; empty means every workflow in the namespace.",
    )
    tasks: list[str] = Field(default_factory=list, description="Only these task names; empty means all tasks.")
    maxRecords: int = Field(default=1_000_000, ge=100, le=50_000_000, description="Train on at most this many of the newest records.")


class AdvisorModelSpec(_Spec):
    """What to train, on which telemetry, and when to retrain."""

    modelType: ModelType = Field(default=ModelType.gradient_boosting, description="Learner behind the advisor.")
    targets: list[Target] = Field(
        default=[Target.memory, Target.cpus, Target.duration],
        min_length=1,
        description="What the model predicts.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    coverage: float = Field(default=advisor_defaults.COVERAGE, ge=0.5, le=0.999, description="Promised share of future runs whose peak memory fits the recommendation.")
    minHistory: int = Field(default=advisor_defaults.MIN_HISTORY, ge=1, le=10_000, description="Observations of a task before the learned model answers for it.")
    confidenceThreshold: float = Field(default=advisor_defaults.CONFIDENCE_THRESHOLD, ge=0, le=1, description="Below this confidence the percentile advisor answers.")
    retrainInterval: Duration = Field(default="1h", description="Retrain at most this often, e.g. 30m, 1h, 6h.")
    newRecordThreshold: int = Field(default=1000, ge=1, description="Retrain early once this many new records arrived.")
    telemetry: TelemetrySource = Field(default_factory=TelemetrySource)

    @model_validator(mode="after")
    def _targets_are_a_set(self) -> "AdvisorModelSpec":
        # the CRD's x-kubernetes-list-type: set, so a spec the models accept the API server stores too
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("targets: duplicate value")
        return self


class ModelQuality(_Spec):
    coverage: float | None = Field(default=None, description="Measured held-out coverage of the memory recommendation.")
    underProvisionRate: float | None = None
    slack: float | None = None
    maeMemoryBytes: float | None = None
    maeDurationSeconds: float | None = None


class ModelPhase(str, enum.Enum):
    Pending = "Pending"
    Training = "Training"
    Ready = "Ready"
    InsufficientData = "InsufficientData"
    Failed = "Failed"


class AdvisorModelStatus(_Spec):
    phase: ModelPhase = ModelPhase.Pending
    modelVersion: str | None = None
    trainedAt: str | None = Field(default=None, description="When training last ran (RFC 3339), whether it promoted a model or not; "
                                  "retrainInterval counts from here.")
    runs: int | None = None
    records: int | None = None
    recordsSeen: int | None = Field(default=None, description="Task records in the namespace when it last trained; newRecordThreshold counts from here.")
    coverage: str | None = Field(default=None, description="Measured coverage, formatted for kubectl get.")
    quality: ModelQuality | None = None
    decision: str | None = Field(default=None, description="Why the last challenger was promoted or kept back.")
    lastError: str | None = None
    observedGeneration: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


# --- ScalableWorkflow -------------------------------------------------------------------


class ResourceMode(str, enum.Enum):
    Off = "Off"
    Initial = "Initial"
    Auto = "Auto"


class ControlledValues(str, enum.Enum):
    RequestsAndLimits = "RequestsAndLimits"
    RequestsOnly = "RequestsOnly"


class ResourceBounds(_Spec):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class ResourcePolicy(_Spec):
    """How recommendations reach the worker pod template, VPA-style."""

    mode: ResourceMode = Field(default=ResourceMode.Initial, description="Off: recommend only. Initial: set requests for new workers. Auto: also keep them current.")
    minAllowed: ResourceBounds = Field(default_factory=ResourceBounds)
    maxAllowed: ResourceBounds = Field(default_factory=ResourceBounds)
    containerName: str = Field(default="worker", description="The Dask worker container in the pod template.")
    controlledValues: ControlledValues = Field(
        default=ControlledValues.RequestsAndLimits,
        description="RequestsAndLimits (default): requests = limits = the recommendation (Guaranteed QoS; Dask's memory "
                    "limit follows the container's). RequestsOnly: requests only; the container's own limits stay, and a "
                    "request above one of them is capped at it (as VPA's controlledValues).")


class WorkerGroup(_Spec):
    """One Dask worker group: ``default`` is the DaskCluster's own, others are DaskWorkerGroups."""

    model_config = ConfigDict(**_Spec.model_config, json_schema_extra={
        "x-kubernetes-validations": [
            {"rule": "self.minWorkers <= self.maxWorkers", "message": "minWorkers must be <= maxWorkers"},
            {
                "rule": "!has(self.resourcePolicy.minAllowed.memory) || !has(self.resourcePolicy.maxAllowed.memory) || "
                "quantity(self.resourcePolicy.minAllowed.memory).compareTo(quantity(self.resourcePolicy.maxAllowed.memory)) <= 0",
                "message": "resourcePolicy.minAllowed.memory must be <= maxAllowed.memory",
            },
            {
                "rule": "!has(self.resourcePolicy.minAllowed.cpu) || !has(self.resourcePolicy.maxAllowed.cpu) || "
                "quantity(self.resourcePolicy.minAllowed.cpu).compareTo(quantity(self.resourcePolicy.maxAllowed.cpu)) <= 0",
                "message": "resourcePolicy.minAllowed.cpu must be <= maxAllowed.cpu",
            },
        ]
    })


    name: DNSName = Field(description="'default' for the DaskCluster's default group, else the DaskWorkerGroup's name.")
    task: str = Field(min_length=1, max_length=253, description="Task name whose history sizes this group's workers.")
    tag: str | None = Field(default=None, min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                            description="Tag the workflow submits this group's tasks with; defaults to name.")
    inputFeatures: dict[str, str] = Field(default_factory=dict, description="Typical input features of the group's tasks (numbers as strings).")
    minWorkers: int = Field(default=0, ge=0, le=10_000)
    maxWorkers: int = Field(default=10, ge=0, le=10_000)
    resourcePolicy: ResourcePolicy = Field(default_factory=ResourcePolicy)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> "WorkerGroup":
        # the same rules as the CEL x-kubernetes-validations above
        if self.minWorkers > self.maxWorkers:
            raise ValueError("minWorkers must be <= maxWorkers")
        low, high = self.resourcePolicy.minAllowed, self.resourcePolicy.maxAllowed
        for field in ("memory", "cpu"):
            a, b = getattr(low, field), getattr(high, field)
            if a is not None and b is not None and quantity(a) > quantity(b):
                raise ValueError(f"resourcePolicy.minAllowed.{field} must be <= maxAllowed.{field}")
        return self


class ScalingMode(str, enum.Enum):
    Predictive = "Predictive"
    Reactive = "Reactive"
    Off = "Off"


class PrometheusQueries(_Spec):
    """PromQL templates; ``$cluster``, ``$namespace`` (and ``$group``, which makes the queue
    queries per worker group) are substituted (string.Template). Every selector must carry
    namespace="$namespace" and dask_org_cluster_name="$cluster", the labels the usual scrape of
    dask-kubernetes' pods attaches; a query that could read another cluster's series is refused."""

    queued: str = f'sum(dask_scheduler_tasks{{state=~"queued|no-worker|waiting",{SCOPE_MATCHERS}}})'
    processing: str = f'sum(dask_scheduler_tasks{{state="processing",{SCOPE_MATCHERS}}})'
    workers: str = f'sum(dask_scheduler_workers{{state!="closed",{SCOPE_MATCHERS}}})'
    workerMemory: str = Field(
        default=f'sum by (instance) (dask_worker_memory_bytes{{type!="spilled",{SCOPE_MATCHERS}}})',
        description="Memory in use per worker (one series per worker); recorded as telemetry by the operator.",
    )


class PrometheusSource(_Spec):
    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048,
                            description="Prometheus base URL; defaults to the operator's --prometheus-url. Must be allowed by "
                                        "the operator's policy (chart value prometheusPolicy.allowedUrls; default: in-cluster "
                                        "Services); credentials in the URL are refused and redirects are not followed.")
    queries: PrometheusQueries = Field(default_factory=PrometheusQueries)
    timeoutSeconds: float = Field(default=5, gt=0, le=60)


class ScalingFallback(_Spec):
    """Replicas to hold while no queue metrics can be read (KEDA's fallback): after
    ``failureThreshold`` polls in a row found neither Prometheus nor the scheduler, every group
    is set to ``replicas`` (within its minWorkers..maxWorkers) until metrics come back."""

    failureThreshold: int = Field(default=3, ge=1, le=1_000, description="Polls in a row without metrics before the fallback applies.")
    replicas: int = Field(ge=0, le=10_000, description="Workers per group while metrics are missing (clamped to the group's bounds).")


class Scaling(_Spec):
    """How the group sizes follow the queue; the defaults are the library's (ScalerConfig)."""

    model_config = ConfigDict(**_Spec.model_config, json_schema_extra={"x-kubernetes-validations": [
        # has(): the API server also checks the rule against the schema default {}, before field defaults
        {"rule": "!has(self.scaleDownThreshold) || !has(self.scaleUpThreshold) || self.scaleDownThreshold < self.scaleUpThreshold",
         "message": "scaleDownThreshold must be below scaleUpThreshold"},
        {"rule": "!has(self.targetUtilisation) || ((has(self.scaleDownThreshold) ? self.scaleDownThreshold : "
                 f"{SCALER_DEFAULTS.scale_down_threshold}) <= self.targetUtilisation && self.targetUtilisation <= "
                 f"(has(self.scaleUpThreshold) ? self.scaleUpThreshold : {SCALER_DEFAULTS.scale_up_threshold}))",
         "message": "targetUtilisation must lie between scaleDownThreshold and scaleUpThreshold"},
    ]})

    mode: ScalingMode = Field(default=ScalingMode.Predictive)
    scaleUpThreshold: float = Field(default=SCALER_DEFAULTS.scale_up_threshold, gt=0, le=10,
                                    description="Scale up when tasks in flight / (workers x threads) exceeds this.")
    scaleDownThreshold: float = Field(default=SCALER_DEFAULTS.scale_down_threshold, gt=0, le=10,
                                      description="Scale down when utilisation falls below this.")
    targetUtilisation: float | None = Field(default=None, gt=0, le=10,
                                            description="Utilisation a scaling step aims at; default midway between the thresholds.")
    cooldownSeconds: int = Field(default=int(SCALER_DEFAULTS.cooldown_seconds), ge=0, le=86_400,
                                 description="A group changes at most this often, except a scale-up right after a scale-down.")
    workerStartupSeconds: float = Field(default=SCALER_DEFAULTS.worker_startup_seconds, ge=0, le=3_600,
                                        description="How long a new worker pod takes to join the scheduler.")
    horizonSeconds: float | None = Field(default=None, gt=0, le=86_400,
                                         description="Predictive look-ahead; default cooldownSeconds + workerStartupSeconds.")
    minConfidence: float = Field(default=SCALER_DEFAULTS.min_confidence, ge=0, le=1,
                                 description="Below this advisor confidence, scaling is reactive and says so.")
    maxScaleUpStep: int | None = Field(default=None, ge=1, le=10_000, description="Most workers added per decision; default unlimited.")
    maxScaleDownStep: int = Field(default=SCALER_DEFAULTS.max_scale_down_step, ge=1, le=10_000,
                                  description="Most idle workers retired per decision.")
    pollIntervalSeconds: int = Field(default=15, ge=1, le=3_600)
    prometheus: PrometheusSource = Field(default_factory=PrometheusSource)
    fallback: ScalingFallback | None = Field(default=None, description="Without it, a workflow with no metrics holds its replicas.")

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> "Scaling":
        if not self.scaleDownThreshold < self.scaleUpThreshold:
            raise ValueError("scaleDownThreshold must be below scaleUpThreshold")
        if self.targetUtilisation is not None and not self.scaleDownThreshold <= self.targetUtilisation <= self.scaleUpThreshold:
            raise ValueError("targetUtilisation must lie between scaleDownThreshold and scaleUpThreshold")
        return self


class LocalRef(_Spec):
    name: DNSName


class ScalableWorkflowSpec(_Spec):
    """Which Dask cluster to size and scale, from which model, and within which bounds."""

    model_config = ConfigDict(**_Spec.model_config, json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.workerGroups.all(g, self.workerGroups.exists_one(h, h.name == g.name))",
         "message": "workerGroups names must be unique"},
        {"rule": "self.workerGroups.all(g, self.workerGroups.exists_one(h, "
                 "(has(h.tag) ? h.tag : h.name) == (has(g.tag) ? g.tag : g.name)))",
         "message": "workerGroups tags (the name when no tag is set) must be unique: each tag has one set of bounds"},
    ]})


    clusterRef: LocalRef = Field(description="The DaskCluster in this namespace.")
    advisorModelRef: LocalRef | None = Field(default=None, description="The AdvisorModel in this namespace; without one, the percentile advisor.")
    workerGroups: list[WorkerGroup] = Field(min_length=1, max_length=64)
    scaling: Scaling = Field(default_factory=Scaling)

    @model_validator(mode="after")
    def _group_names_unique(self) -> "ScalableWorkflowSpec":
        names = [g.name for g in self.workerGroups]
        if len(set(names)) != len(names):
            raise ValueError("workerGroups names must be unique")
        tags = [g.tag or g.name for g in self.workerGroups]
        if len(set(tags)) != len(tags):
            raise ValueError("workerGroups tags (the name when no tag is set) must be unique: each tag has one set of bounds")
        return self

    def scaler_config(self) -> ScalerConfig:
        """The one mapping of this spec onto the library's scaler configuration."""
        s = self.scaling
        return ScalerConfig(
            min_workers={(g.tag or g.name): g.minWorkers for g in self.workerGroups},
            max_workers={(g.tag or g.name): g.maxWorkers for g in self.workerGroups},
            scale_up_threshold=s.scaleUpThreshold,
            scale_down_threshold=s.scaleDownThreshold,
            target_utilisation=s.targetUtilisation,
            cooldown_seconds=float(s.cooldownSeconds),
            worker_startup_seconds=s.workerStartupSeconds,
            horizon_seconds=s.horizonSeconds,
            min_confidence=s.minConfidence,
            max_scale_up_step=s.maxScaleUpStep,
            max_scale_down_step=s.maxScaleDownStep,
        )


class UncappedTarget(_Spec):
    """Status only, written by the operator: plain strings (a CEL quantity rule per status field
    would cost more than the API server's validation budget allows)."""

    cpu: str | None = None
    memory: str | None = None


class Recommendation(_Spec):
    cpu: str | None = None
    memory: str | None = Field(default=None, description="The target memory the worker template gets.")
    lowerBound: str | None = Field(default=None, description="Low end of the advisor's interval of the task's peak memory (capped by the "
                                   "resource policy); absent when the advisor gives no interval.")
    upperBound: str | None = Field(default=None, description="High end of that interval (capped by the resource policy); at least the target.")
    uncappedTarget: UncappedTarget | None = Field(
        default=None, description="What the advisor recommended before minAllowed, maxAllowed and the floors a Dask worker "
                                  "needs (as VPA's uncappedTarget): where it differs from cpu/memory, the policy decided.")
    confidence: float | None = None
    method: str | None = None
    basis: str | None = None
    modelVersion: str | None = None


class Decision(_Spec):
    time: str
    action: str
    fromReplicas: int = Field(alias="from")
    toReplicas: int = Field(alias="to")
    reason: str
    mode: str | None = None
    predictedLoad: float | None = None
    confidence: float | None = None
    queued: float | None = None
    processing: float | None = None


class OOMKillStatus(_Spec):
    """The largest memory limit at which a worker of the group was OOM-killed under a model version."""

    memory: str = Field(description="The worker container's memory limit when the kernel killed it.")
    pod: str | None = None
    time: str | None = Field(default=None, description="When the operator first saw it.")
    modelVersion: str | None = Field(default=None, description="The model the recommendation came from then; "
                                     "the kill sizes the retry until a newer model is trained.")


class GroupStatus(_Spec):
    name: str
    recommendation: Recommendation | None = None
    lastOOMKill: OOMKillStatus | None = None
    currentReplicas: int | None = None
    desiredReplicas: int | None = None
    lastDecision: Decision | None = None
    lastScaleTime: str | None = Field(default=None, description="When replicas were last changed; the cooldown counts from here, across operator restarts.")


class ScalableWorkflowStatus(_Spec):
    """Per group results plus a summary of the first group for ``kubectl get``."""

    cpu: str | None = None
    memory: str | None = None
    confidence: str | None = None
    currentWorkers: int | None = None
    desiredWorkers: int | None = None
    metricsFailures: int | None = Field(default=None, description="Polls in a row that found no queue metrics (0 once they come back).")
    groups: list[GroupStatus] = Field(default_factory=list)
    observedGeneration: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


class AdvisorModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    spec: AdvisorModelSpec = Field(default_factory=AdvisorModelSpec)
    status: AdvisorModelStatus | None = None


class ScalableWorkflow(BaseModel):
    model_config = ConfigDict(extra="allow")
    spec: ScalableWorkflowSpec
    status: ScalableWorkflowStatus | None = None
