"""Kubernetes quantities and times as the API server writes them, and a Lease judged on
locally observed time (issue 14 point 6)."""

from __future__ import annotations

import asyncio
import copy
import time

import pytest

from scalable import units
from scalable.controller import quantities
from scalable.controller.dask_objects import ContainerResources
from scalable.controller.kube import Conflict
from scalable.controller.leader import LeaderElector
from scalable.controller.resources import WorkerGroup
from scalable.controller.sizing import clamp
from scalable.controller.timestamps import parse_time, precise_time

GiB = 1024**3


# --- quantities ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("1288490188800m", 1288490189),  # what the VPA writes: 1.2 GB in milli-bytes, rounded up
    ("16Gi", 16 * GiB), ("1e3", 1000), ("1k", 1000), ("1.5Gi", 3 * GiB // 2), (1024, 1024),
    ("16GB", 16_000_000_000), ("2 GiB", 2 * GiB),  # a person's units in a hand-written template
])
def test_memory_of_a_kubernetes_object(text, expected):
    assert quantities.parse_memory(text) == expected


@pytest.mark.parametrize("text,expected", [("1k", 1000.0), ("500m", 0.5), ("2", 2.0), ("1e1", 10.0), (3, 3.0)])
def test_cpu_of_a_kubernetes_object(text, expected):
    assert quantities.parse_cpu(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1Gi", "", None, True, float("nan")])
def test_what_is_no_quantity_is_refused(bad):
    with pytest.raises(units.QuantityError):
        quantities.parse_memory(bad)


def test_a_pod_template_with_the_vpas_quantities_is_read():
    container = {"resources": {"requests": {"memory": "1288490188800m", "cpu": "1k"},
                               "limits": {"memory": "1288490188800m"}}}
    parsed = ContainerResources.of(container)
    assert parsed.memory_request == parsed.memory_limit == 1288490189
    assert parsed.cpu_request == 1000.0


def test_resource_policy_bounds_in_any_kubernetes_form():
    sized = clamp(2.0, 4 * GiB, max_allowed={"memory": "1288490188800m", "cpu": "1k"})
    assert sized.memory_bytes == 1288490189
    group = WorkerGroup(name="w", task="t", resourcePolicy={"minAllowed": {"memory": "1288490188800m"},
                                                  "maxAllowed": {"memory": "2Gi"}})
    assert group.resourcePolicy.maxAllowed.memory == "2Gi"
    with pytest.raises(ValueError):
        WorkerGroup(name="w", task="t", resourcePolicy={"minAllowed": {"memory": "3Gi"},
                                              "maxAllowed": {"memory": "1288490188800m"}})


def test_user_input_keeps_the_friendly_units_and_refuses_an_ambiguous_m():
    assert units.parse_memory("4GB") == 4_000_000_000
    assert units.parse_memory("2 GiB") == 2 * GiB
    with pytest.raises(units.QuantityError, match="512M or 512Mi"):
        units.parse_memory("512m")


# --- times -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "2024-05-01T12:00:00Z", "2024-05-01T12:00:00+00:00", "2024-05-01T14:00:00+02:00",
    "2024-05-01T12:00:00.000000000Z", "2024-05-01T12:00:00.000000Z",
])
def test_rfc3339_times_in_every_form_the_api_server_may_send(text):
    assert parse_time(text) == 1714564800.0


def test_nanoseconds_are_kept_to_the_microsecond_and_precise_time_round_trips():
    assert parse_time("2024-05-01T12:00:00.123456789Z") == pytest.approx(1714564800.123456, abs=1e-6)
    now = time.time()
    assert parse_time(precise_time(now)) == pytest.approx(now, abs=1e-6)
    assert parse_time("yesterday") is None and parse_time(None) is None


# --- leader election on observed time ----------------------------------------------------------


class _Leases:
    """An in-memory stand-in for the API server's Lease endpoint: get, create, and a replace
    that refuses a stale resourceVersion (409), which is all LeaderElector uses."""

    def __init__(self):
        self.lease = None
        self.version = 0

    async def get(self, kind, namespace, name):
        return copy.deepcopy(self.lease)

    async def create(self, kind, namespace, body):
        if self.lease is not None:
            raise Conflict("exists")
        self._store(body)

    async def replace(self, kind, namespace, name, body):
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise Conflict("stale")
        self._store(body)

    def _store(self, body):
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)

    def skew(self, seconds):
        """Rewrite renewTime as a holder whose clock is off by ``seconds`` would have written it."""
        renewed = parse_time(self.lease["spec"]["renewTime"])
        self.lease["spec"]["renewTime"] = precise_time(renewed + seconds)


LEASE_S = 0.4


def _elector(kube, identity):
    return LeaderElector(kube, "ns", "scalable-operator", identity, lease_s=LEASE_S, renew_s=0.1)  # type: ignore[arg-type]


def test_a_live_holder_whose_clock_runs_an_hour_behind_keeps_the_lease():
    """Before: renewTime + duration < my clock, so the standby took a live leader's Lease."""
    async def scenario():
        kube = _Leases()
        leader, standby = _elector(kube, "a"), _elector(kube, "b")
        assert await leader.try_acquire()
        deadline = time.monotonic() + 3 * LEASE_S
        while time.monotonic() < deadline:
            kube.skew(-3600)
            assert not await standby.try_acquire()
            await asyncio.sleep(0.1)
            assert await leader.try_acquire()  # the renewal changes the record
        assert kube.lease["spec"]["holderIdentity"] == "a"

    asyncio.run(scenario())


def test_a_dead_holder_whose_clock_ran_an_hour_ahead_loses_the_lease_after_one_duration():
    """Before: renewTime + duration was an hour in the future, so the Lease never expired."""
    async def scenario():
        kube = _Leases()
        assert await _elector(kube, "a").try_acquire()
        kube.skew(+3600)  # a's last renewal, stamped by a clock an hour fast; then a dies
        standby = _elector(kube, "b")
        assert not await standby.try_acquire()  # first sight: a full lease duration to wait
        await asyncio.sleep(LEASE_S / 2)
        assert not await standby.try_acquire()
        await asyncio.sleep(LEASE_S / 2 + 0.05)
        assert await standby.try_acquire()
        spec = kube.lease["spec"]
        assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1

    asyncio.run(scenario())


def test_a_released_lease_is_taken_at_once():
    async def scenario():
        kube = _Leases()
        leader, standby = _elector(kube, "a"), _elector(kube, "b")
        assert not await standby.try_acquire() if await leader.try_acquire() else False
        leader.leading = True
        await leader.release()
        assert await standby.try_acquire()

    asyncio.run(scenario())
