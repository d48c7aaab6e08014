"""Leader election with a coordination.k8s.io/v1 Lease, so two replicas never both act.

Chosen over kopf's peering because a Lease needs no extra CRD (kopf's KopfPeering), is what
every Kubernetes controller uses (``kubectl get lease`` shows who leads), and its RBAC is three
verbs on one named object. kopf itself runs with ``standalone=True`` (its peering off) and is
only started once this replica holds the Lease.

Protocol (client-go's): the holder renews ``renewTime`` every ``renew_s``; another replica may
take the Lease once it has seen the Lease record unchanged for ``leaseDurationSeconds`` of its
*own* monotonic clock. Like client-go, it never compares the holder's ``renewTime`` with its
own wall clock: replicas' clocks may disagree by more than a lease (a holder whose clock runs
behind would look expired to everyone, one whose clock runs ahead would never expire), while
"the record has not changed for a lease duration, as I measured it" is true whatever the
clocks say. A replica that starts beside an existing Lease therefore waits one lease duration
before taking it, unless the holder released it (empty holder). Every write is a
replace with the ``resourceVersion`` that was read, so of two replicas racing for an expired
Lease exactly one wins (the other gets 409). A leader that cannot renew within the lease
duration stops acting before anyone else can take over (it stops at ``lease - renew``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from scalable.controller.kube import Conflict, KubeClient, KubeError
from scalable.controller.timestamps import precise_time

__all__ = ["LeaderElector"]

log = logging.getLogger("scalable.controller.leader")


class LeaderElector:
    def __init__(self, kube: KubeClient, namespace: str, name: str, identity: str,
                 lease_s: int = 15, renew_s: float = 5.0, retry_s: float = 2.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.retry_s = retry_s
        self.leading = False
        self.last_renew = 0.0
        #: the Lease's spec as last read, and when (time.monotonic()) this replica saw it change
        self.observed: dict[str, Any] | None = None
        self.observed_at = 0.0

    def _observe(self, spec: dict[str, Any], now_monotonic: float) -> None:
        if spec != self.observed:
            self.observed, self.observed_at = dict(spec), now_monotonic

    def expired(self, spec: dict[str, Any], now_monotonic: float) -> bool:
        """Whether the Lease (as just read, after :meth:`_observe`) may be taken: no holder, or
        a record unchanged for its lease duration by this replica's monotonic clock."""
        if not spec.get("holderIdentity"):
            return True
        duration = float(spec.get("leaseDurationSeconds") or self.lease_s)
        return now_monotonic - self.observed_at >= duration

    def _body(self, existing: dict[str, Any] | None, now: float, transitions: int, acquire_time: str) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if existing is not None:
            metadata["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_s, "acquireTime": acquire_time,
                     "renewTime": precise_time(now), "leaseTransitions": transitions},
        }

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True if this replica holds it afterwards."""
        now = time.time()  # only written, as renewTime, for people reading the Lease
        lease = await self.kube.get("Lease", self.namespace, self.name)
        seen = time.monotonic()
        try:
            if lease is None:
                body = self._body(None, now, 0, precise_time(now))
                await self.kube.create("Lease", self.namespace, body)
                self._wrote(body)
                return True
            spec = lease.get("spec") or {}
            self._observe(spec, seen)
            transitions = int(spec.get("leaseTransitions") or 0)
            if spec.get("holderIdentity") == self.identity:
                body = self._body(lease, now, transitions, spec.get("acquireTime") or precise_time(now))
                await self.kube.replace("Lease", self.namespace, self.name, body)
                self._wrote(body)
                return True
            if not self.expired(spec, seen):
                return False
            body = self._body(lease, now, transitions + 1, precise_time(now))
            await self.kube.replace("Lease", self.namespace, self.name, body)
            self._wrote(body)
            return True
        except Conflict:
            return False

    def _wrote(self, body: dict[str, Any]) -> None:
        self.last_renew = time.monotonic()
        self.observed, self.observed_at = dict(body["spec"]), self.last_renew

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Wait until this replica leads (True) or ``stop`` is set (False)."""
        while stop is None or not stop.is_set():
            try:
                if await self.try_acquire():
                    self.leading = True
                    log.info("leading as %s (lease %s/%s)", self.identity, self.namespace, self.name)
                    return True
            except KubeError as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            await asyncio.sleep(self.retry_s)
        return False

    async def hold(self, lost: asyncio.Event) -> None:
        """Renew until renewing fails for too long; then set ``lost`` and return."""
        while self.leading:
            await asyncio.sleep(self.renew_s)
            try:
                if await self.try_acquire():
                    continue
                log.error("lease %s/%s was taken by another replica", self.namespace, self.name)
            except KubeError as exc:
                if time.monotonic() - self.last_renew < self.lease_s - self.renew_s:
                    log.warning("lease renewal failed, retrying: %s", exc)
                    continue
                log.error("lease %s/%s could not be renewed in time: %s", self.namespace, self.name, exc)
            except Exception as exc:  # noqa: BLE001 - any failure to renew means stop acting
                if time.monotonic() - self.last_renew < self.lease_s - self.renew_s:
                    continue
                log.error("lease renewal failed: %s", exc)
            self.leading = False
            lost.set()
            return

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over at once."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self.kube.get("Lease", self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body = self._body(lease, time.time() - self.lease_s - 1, int(lease["spec"].get("leaseTransitions") or 0),
                                  lease["spec"].get("acquireTime") or precise_time(time.time()))
                body["spec"]["holderIdentity"] = None
                await self.kube.replace("Lease", self.namespace, self.name, body)
        except KubeError as exc:
            log.warning("could not release the lease: %s", exc)
