"""Bounds hold whatever the metrics say (property tests over the operator's own code paths).

* One scaling poll (``poll_once``) after another, with Prometheus answers drawn from anything a
  broken exporter can produce (NaN, +-Inf, negative, huge, absent) passed through the real
  sample check (``prometheus.check_value``): replicas never leave [minWorkers, maxWorkers],
  a scale-down never goes below the workers that are busy, a refused answer changes nothing
  and the condition names what happened. (tests/unit/scaling/test_scaler.py covers the
  AdaptiveScaler alone over integer snapshots; this drives the controller's poll around it.)
* ``sizing.clamp``: no recommendation, however large, small or odd, leaves minAllowed/maxAllowed,
  and the quantities written into the pod template parse back inside the bounds.

Rerun: ``pytest tests/unit/controller/test_bounds_properties.py -q``
"""

from __future__ import annotations

import asyncio
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from scalable.controller import sizing
from scalable.controller.kube import Conflict
from scalable.controller.prometheus import MetricsUnavailable, QueueMetrics, check_value
from scalable.controller.resources import ScalableWorkflowSpec
from scalable.controller.scaling_loop import PollDeps, make_scaler, poll_once
from scalable.units import parse_cpu, parse_memory


class _Cluster:
    """The one DaskCluster a poll reads and patches, with resourceVersion semantics."""

    def __init__(self, replicas: int) -> None:
        self.replicas, self.version, self.patches = replicas, 1, 0

    async def get(self, kind, namespace, name):
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self.version)},
                "spec": {"worker": {"replicas": self.replicas, "spec": {"containers": [{"name": "worker"}]}}}}

    async def set_replicas(self, kind, namespace, name, replicas, resource_version, **extra):
        if resource_version != str(self.version):
            raise Conflict(409, "changed")
        self.replicas, self.version, self.patches = replicas, self.version + 1, self.patches + 1


_sample = st.one_of(
    st.floats(0, 500), st.integers(0, 500).map(float),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e-9, 1e308, 1e12, "NaN", "+Inf", "garbage", None]),
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    low=st.integers(0, 5), extra=st.integers(0, 15), start=st.integers(0, 30),
    polls=st.lists(st.tuples(_sample, _sample, st.floats(0, 120)), min_size=1, max_size=12),
    mode=st.sampled_from(["Reactive", "Predictive"]), cooldown=st.sampled_from([0, 30]),
)
def test_no_metrics_move_replicas_out_of_bounds_or_below_busy_workers(low, extra, start, polls, mode, cooldown):
    high = low + extra
    spec = ScalableWorkflowSpec.model_validate({
        "clusterRef": {"name": "sim"},
        "workerGroups": [{"name": "default", "task": "simulate", "minWorkers": low, "maxWorkers": high}],
        "scaling": {"mode": mode, "cooldownSeconds": cooldown, "pollIntervalSeconds": 1},
    })
    cluster = _Cluster(start)
    current: dict = {}

    async def prometheus(namespace, name, spec_, group):
        queued, processing = current["sample"]
        return QueueMetrics(queued=check_value(queued, "queued"), processing=check_value(processing, "processing"),
                            workers=None, source="prometheus")

    async def no_autoscalers(namespace):
        return []

    deps = PollDeps(kube=cluster, prometheus=prometheus, autoscalers=no_autoscalers)
    scaler = make_scaler(spec)
    body = {"metadata": {"name": "wf", "namespace": "ns"}, "spec": spec.model_dump(by_alias=True), "status": {}}
    now = 1_000.0
    for queued, processing, gap in polls:
        now += gap
        current["sample"] = (queued, processing)
        before, patches = cluster.replicas, cluster.patches
        try:
            good = (check_value(queued, "q"), check_value(processing, "p"))
        except MetricsUnavailable:
            good = None
        result = asyncio.run(poll_once(deps, body, scaler, now))
        conditions = {c["type"]: c for c in result.conditions}
        if good is None:
            assert cluster.patches == patches and cluster.replicas == before, "a refused answer must change nothing"
            assert conditions["PrometheusAvailable"]["status"] is False and conditions["PrometheusAvailable"]["reason"] == "BadValue"
            assert conditions["Scaling"]["status"] is False and conditions["Scaling"]["reason"] == "NoMetrics"
            continue
        if low <= before <= high or cluster.replicas != before:
            assert low <= cluster.replicas <= high, (before, cluster.replicas, good)
        if low <= before <= high and cluster.replicas < before:
            busy = min(before, int(round(good[0])) + int(round(good[1])))
            assert cluster.replicas >= max(low, busy), f"{before} -> {cluster.replicas} with {good} tasks in flight"
        group = result.groups["default"]
        body["status"] = {"groups": [{"name": "default", **{k: v for k, v in group.items() if k == "lastScaleTime"}}]}


_QUANTITY_CPU = st.sampled_from(["100m", "250m", "500m", "1", "1.5", "2", "3500m", "4", "64"])
_QUANTITY_MEM = st.sampled_from(["256Mi", "300M", "1Gi", "1500M", "2G", "3.5Gi", "8Gi", "1000000000", "64Gi", "1Ti"])
_numbers = st.floats(0, 1e15, allow_nan=False) | st.sampled_from([0.0, 1e-9, 0.0999, 0.1, 2**53 + 0.5, 1e300])


@settings(max_examples=300, deadline=None, database=None)
@given(cpus=_numbers, memory=_numbers, lo_cpu=st.none() | _QUANTITY_CPU, hi_cpu=st.none() | _QUANTITY_CPU,
       lo_mem=st.none() | _QUANTITY_MEM, hi_mem=st.none() | _QUANTITY_MEM)
def test_no_recommendation_leaves_min_allowed_or_max_allowed(cpus, memory, lo_cpu, hi_cpu, lo_mem, hi_mem):
    if lo_cpu and hi_cpu and parse_cpu(lo_cpu) > parse_cpu(hi_cpu):
        lo_cpu, hi_cpu = hi_cpu, lo_cpu  # the CRD refuses min > max (test_spec_fuzz)
    if lo_mem and hi_mem and parse_memory(lo_mem) > parse_memory(hi_mem):
        lo_mem, hi_mem = hi_mem, lo_mem
    sized = sizing.clamp(cpus, memory, {"cpu": lo_cpu, "memory": lo_mem}, {"cpu": hi_cpu, "memory": hi_mem})
    block = sized.resources
    for values in (block["requests"], block["limits"]):
        written_cpu, written_mem = parse_cpu(values["cpu"]), parse_memory(values["memory"])
        if hi_cpu:
            assert written_cpu <= parse_cpu(hi_cpu) + 1e-9, (values, hi_cpu)
        if lo_cpu:
            assert written_cpu >= parse_cpu(lo_cpu) - 1e-9, (values, lo_cpu)
        if hi_mem:
            assert written_mem <= parse_memory(hi_mem), (values, hi_mem)
        if lo_mem:
            assert written_mem >= parse_memory(lo_mem), (values, lo_mem)
        if not hi_mem or parse_memory(hi_mem) >= sizing.MIN_MEMORY:
            assert written_mem >= min(sizing.MIN_MEMORY, parse_memory(hi_mem) if hi_mem else sizing.MIN_MEMORY)


@given(bad=st.sampled_from([math.nan, math.inf, -math.inf, -1.0]))
def test_a_nonsense_recommendation_is_refused_not_clamped(bad):
    for cpus, memory in ((bad, 1e9), (1.0, bad)):
        try:
            sizing.clamp(cpus, memory, None, None)
        except sizing.SizingError:
            continue
        raise AssertionError(f"clamp accepted cpus={cpus} memory={memory}")
