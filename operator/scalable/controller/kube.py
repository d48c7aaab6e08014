"""The operator's access to the Kubernetes API: the few objects it reads and writes, nothing else.

One small client over kr8s' raw ``call_api`` so every request the operator makes is visible in
one file (and in the chart's ``templates/_helpers.tpl``, which grants exactly these verbs):

==========================  ====================================================  ===============
method                      resource                                              verbs
==========================  ====================================================  ===============
get / list                  daskclusters, daskworkergroups, daskautoscalers       get, list
list (label selector)       pods (core/v1): the worker pods, read only            list
patch (replicas, template)  daskclusters, daskworkergroups                        patch
get / patch_status          scalableworkflows, advisormodels (+ /status)          get, patch
event                       events (core/v1)                                      create
token_review                tokenreviews (authentication.k8s.io)                  create
access_review               subjectaccessreviews (authorization.k8s.io)           create
lease                       leases (coordination.k8s.io), operator namespace      get, create, update
==========================  ====================================================  ===============

Writes are guarded: a patch carries the ``resourceVersion`` it was computed from, so a write
based on a stale read fails with :class:`Conflict` (HTTP 409, or 422 from a failed JSON-patch
``test``) instead of overwriting someone else's change; callers re-read and decide again.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kr8s
import kr8s.asyncio

__all__ = ["KIND", "Conflict", "KubeClient", "KubeError", "NotFound", "Kind"]


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str


KIND = {
    "DaskCluster": Kind("kubernetes.dask.org/v1", "DaskCluster", "daskclusters"),
    "DaskWorkerGroup": Kind("kubernetes.dask.org/v1", "DaskWorkerGroup", "daskworkergroups"),
    "DaskAutoscaler": Kind("kubernetes.dask.org/v1", "DaskAutoscaler", "daskautoscalers"),
    "ScalableWorkflow": Kind("scalable.dev/v1alpha1", "ScalableWorkflow", "scalableworkflows"),
    "AdvisorModel": Kind("scalable.dev/v1alpha1", "AdvisorModel", "advisormodels"),
    "Lease": Kind("coordination.k8s.io/v1", "Lease", "leases"),
    "Pod": Kind("v1", "Pod", "pods"),
}


class KubeError(Exception):
    """The API server refused a request; ``code`` is the HTTP status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}")
        self.code = code
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """The object changed since it was read."""


def _raise(exc: kr8s.ServerError) -> None:
    response = exc.response
    code = response.status_code if response is not None else 0
    message = str(exc)
    if isinstance(exc.status, dict):
        message = exc.status.get("message", message)
    if code == 404:
        raise NotFound(code, message) from exc
    if code == 409 or (code == 422 and "test" in message.lower() and "fail" in message.lower()):
        raise Conflict(code, message) from exc
    raise KubeError(code, message) from exc


class KubeClient:
    """Async access to the objects the operator works with."""

    #: requests in flight at once. httpx's connection pool scans every queued request on each
    #: response, so hundreds of daemons calling at once cost quadratic CPU; queueing here is cheap.
    MAX_IN_FLIGHT = 16

    def __init__(self, api: Any, component: str = "scalable-operator") -> None:
        self.api = api
        self.component = component
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._in_flight: asyncio.Semaphore | None = None

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> KubeClient:
        """From ``kubeconfig`` (or $KUBECONFIG), else the in-cluster ServiceAccount."""
        api = await kr8s.asyncio.api(kubeconfig=kubeconfig or os.environ.get("KUBECONFIG"))
        return cls(api)

    async def _call(self, method: str, kind: Kind, namespace: str | None, url: str, **kwargs: Any) -> Any:
        if self._in_flight is None:
            self._in_flight = asyncio.Semaphore(self.MAX_IN_FLIGHT)
        async with self._in_flight:
            try:
                async with self.api.call_api(method, version=kind.api_version, namespace=namespace, url=url, **kwargs) as response:
                    return response.json() if response.content else None
            except kr8s.ServerError as exc:
                _raise(exc)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self._call("GET", KIND[kind], namespace, f"{KIND[kind].plural}/{name}")
        except NotFound:
            return None

    async def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self._call("GET", KIND[kind], namespace, KIND[kind].plural, params=params)
        return list((result or {}).get("items") or [])

    async def json_patch(self, kind: str, namespace: str, name: str, ops: list[dict[str, Any]],
                         resource_version: str | None = None, subresource: str = "") -> dict[str, Any]:
        """Apply a JSON patch; with ``resource_version`` it only applies to that exact version."""
        if resource_version is not None:
            ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}, *ops]
        url = f"{KIND[kind].plural}/{name}" + (f"/{subresource}" if subresource else "")
        return await self._call(
            "PATCH", KIND[kind], namespace, url, json=ops, headers={"Content-Type": "application/json-patch+json"}
        )

    async def merge_patch(self, kind: str, namespace: str, name: str, body: Mapping[str, Any],
                          resource_version: str | None = None, subresource: str = "") -> dict[str, Any]:
        """Apply a merge patch; with ``resource_version`` a stale write is refused with 409."""
        body = dict(body)
        if resource_version is not None:
            body["metadata"] = {**body.get("metadata", {}), "resourceVersion": resource_version}
        url = f"{KIND[kind].plural}/{name}" + (f"/{subresource}" if subresource else "")
        return await self._call(
            "PATCH", KIND[kind], namespace, url, json=body, headers={"Content-Type": "application/merge-patch+json"}
        )

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self.merge_patch(kind, namespace, name, {"status": dict(status)}, subresource="status")

    async def set_replicas(self, kind: str, namespace: str, name: str, replicas: int, resource_version: str,
                           annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``spec.worker.replicas`` of a DaskCluster or DaskWorkerGroup, only if unchanged since read;
        ``annotations`` are written in the same patch (atomically with the replicas)."""
        body: dict[str, Any] = {"spec": {"worker": {"replicas": int(replicas)}}}
        if annotations:
            body["metadata"] = {"annotations": dict(annotations)}
        return await self.merge_patch(kind, namespace, name, body, resource_version)

    async def event(self, obj: Mapping[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        """A core/v1 Event about ``obj``; failures to record an Event never fail a reconcile."""
        metadata = obj.get("metadata") or {}
        now = _dt.datetime.now(_dt.timezone.utc)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata.get('name', 'object')}.", "namespace": metadata.get("namespace")},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": metadata.get("name"),
                "namespace": metadata.get("namespace"), "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance[:128],
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            await self._call("POST", Kind("v1", "Event", "events"), metadata.get("namespace"), "events", json=body)
        except KubeError:
            pass

    async def token_review(self, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        if audiences:
            body["spec"]["audiences"] = audiences
        result = await self._call("POST", Kind("authentication.k8s.io/v1", "TokenReview", "tokenreviews"), None, "tokenreviews", json=body)
        return (result or {}).get("status") or {}

    async def access_review(self, user: Mapping[str, Any], namespace: str, verb: str, group: str,
                            resource: str, name: str) -> dict[str, Any]:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user.get("username"),
                "groups": list(user.get("groups") or []),
                "uid": user.get("uid"),
                "extra": dict(user.get("extra") or {}),
                "resourceAttributes": {"namespace": namespace, "verb": verb, "group": group, "resource": resource, "name": name},
            },
        }
        result = await self._call(
            "POST", Kind("authorization.k8s.io/v1", "SubjectAccessReview", "subjectaccessreviews"), None,
            "subjectaccessreviews", json=body,
        )
        return (result or {}).get("status") or {}

    async def create(self, kind: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", KIND[kind], namespace, KIND[kind].plural, json=dict(body))

    async def replace(self, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("PUT", KIND[kind], namespace, f"{KIND[kind].plural}/{name}", json=dict(body))
