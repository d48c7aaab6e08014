"""The ``kubernetes`` target: worker groups as DaskWorkerGroups of a DaskCluster.

Kept thin on purpose: dask-kubernetes' ``KubeCluster`` does the work, this module only
maps scalable.yaml onto it (one worker group per tag, whose workers carry the Dask resource
``tag-<tag>``, with the group's threads, memory limit and pod requests/limits) and turns the
scaler's targets into ``cluster.scale(n, worker_group=tag)``. Scaling down is left to the
dask-kubernetes controller, which retires workers through the scheduler gracefully (it
asks the scheduler which workers to close, idle ones first).

It cannot be exercised without a cluster running the dask-kubernetes controller, so the
tests cover only what is built here from the manifest (:func:`worker_command`,
:func:`pod_resources`) and the refusal of an incomplete manifest; the scheduler and
workers need ``scalable`` installed in their image for telemetry and queue state.

dask-kubernetes comes with the ``[operator]`` extra; it is imported when a target is made, so a
core install fails there, before anything starts, naming ``pip install 'scalable-operator[operator]'``.
"""

from __future__ import annotations

from typing import Any

from distributed import Client

from scalable.extras import OPERATOR, require
from scalable.session.local import TAG_RESOURCE_AMOUNT
from scalable.session.manifest import Manifest, WorkerGroup, resource_name
from scalable.units import resources_block

__all__ = ["KubernetesTarget", "worker_command", "pod_resources"]


def worker_command(group: WorkerGroup) -> list[str]:
    """The ``dask worker`` command of a group's pods."""
    return [
        "dask",
        "worker",
        "--nthreads",
        str(group.threads),
        "--memory-limit",
        str(group.memory),
        "--resources",
        f"{resource_name(group.tag)}={TAG_RESOURCE_AMOUNT}",
    ]


def pod_resources(group: WorkerGroup) -> dict[str, dict[str, str]]:
    """Requests equal to limits, exactly the memory the worker's ``--memory-limit`` says."""
    return resources_block(group.cpus, group.memory)


class KubernetesTarget:
    """Connects to (or creates) the DaskCluster named in scalable.yaml."""

    name = "kubernetes"

    def __init__(self, manifest: Manifest) -> None:
        if not manifest.kubernetes.cluster:
            raise ValueError("scalable.yaml: kubernetes.cluster: name the DaskCluster to use (target: kubernetes)")
        self._kubecluster = require(
            "dask_kubernetes.operator.kubecluster.kubecluster", extra=OPERATOR, needed_by="the session's kubernetes target")
        self.manifest = manifest
        self.cluster: Any = None
        self._replicas: dict[str, int] = {}

    def start(self) -> Client:
        KubeCluster, CreateMode = self._kubecluster.KubeCluster, self._kubecluster.CreateMode
        settings = self.manifest.kubernetes
        self.cluster = KubeCluster(
            name=settings.cluster,
            namespace=settings.namespace,
            image=settings.image,
            n_workers=0,
            create_mode=CreateMode.CREATE_OR_CONNECT if settings.create else CreateMode.CONNECT_ONLY,
            shutdown_on_close=False,
        )
        for group in self.manifest.worker_groups:
            self.cluster.add_worker_group(
                name=group.tag,
                n_workers=group.workers.min,
                image=settings.image,
                resources=pod_resources(group),
                worker_command=worker_command(group),
            )
            self._replicas[group.tag] = group.workers.min
        return Client(self.cluster)

    def workers(self, tag: str) -> list[str]:
        """The replicas last asked for; the controller brings the pods to it."""
        return [f"{tag}-{i}" for i in range(self._replicas.get(tag, 0))]

    def scale_up(self, tag: str, count: int) -> list[str]:
        self._replicas[tag] = self._replicas.get(tag, 0) + count
        self.cluster.scale(self._replicas[tag], worker_group=tag)
        return self.workers(tag)[-count:]

    def retire(self, client: Client, tag: str, idle: list[str], count: int) -> list[str]:
        count = min(count, len(idle))
        if count <= 0:
            return []
        self._replicas[tag] = max(0, self._replicas.get(tag, 0) - count)
        self.cluster.scale(self._replicas[tag], worker_group=tag)
        return idle[:count]

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
