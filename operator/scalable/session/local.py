"""The ``local`` target: one Dask LocalCluster, a set of worker processes per worker group.

Each worker of a group carries the Dask resource ``tag-<tag>`` with a practically unlimited
amount, so a task submitted with that tag (which requires one unit) can only run there,
while the number of threads still bounds how many run at once. Workers are added by
extending the cluster's worker spec; they are removed only after the scheduler has retired
them gracefully, and only if they were idle.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from distributed import Client, LocalCluster, Nanny

from scalable.session.manifest import Manifest, resource_name
from scalable.session.queue import retire_idle

__all__ = ["LocalTarget", "TAG_RESOURCE_AMOUNT", "WorkerStartError"]

logger = logging.getLogger(__name__)

#: a group's resource amount per worker: large, so that the resource never limits concurrency
TAG_RESOURCE_AMOUNT = 1_000_000


class WorkerStartError(RuntimeError):
    """The local cluster's first workers could not be started."""


class LocalTarget:
    """Starts and resizes a LocalCluster whose workers are grouped by tag."""

    name = "local"

    def __init__(self, manifest: Manifest, *, silence_logs: int = logging.ERROR) -> None:
        self.manifest = manifest
        self.silence_logs = silence_logs
        self.cluster: LocalCluster | None = None
        self._counter = 0
        self._lock = threading.Lock()

    def start(self) -> Client:
        self.cluster = LocalCluster(
            n_workers=0,
            processes=True,
            dashboard_address=None,
            silence_logs=self.silence_logs,
        )
        initial = {}
        for group in self.manifest.worker_groups:
            initial.update({name: self._spec(group.tag) for name in self._new_names(group.tag, group.workers.min)})
        if initial:
            self._start_initial(initial)
        return Client(self.cluster)

    def _start_initial(self, specs: dict[str, Any]) -> None:
        """Start the groups' minimum workers and wait for them, so that a worker process that
        cannot start fails ``start()`` here instead of leaving ``gather`` waiting forever."""
        assert self.cluster is not None
        cluster = self.cluster

        async def correct() -> None:
            cluster.worker_spec.update(specs)
            await cluster._correct_state()

        try:
            cluster.sync(correct)
        except Exception as exc:
            self.close()
            raise WorkerStartError(
                f"the local cluster's first workers did not start ({exc}). If this is a script, the "
                "usual cause is a missing main guard: Dask's worker processes import the script again, "
                "so the code that starts the session must be under `if __name__ == \"__main__\":` "
                "(see the error the worker printed above)"
            ) from exc

    def _spec(self, tag: str) -> dict[str, Any]:
        group = self.manifest.group(tag)
        assert self.cluster is not None
        options = dict(self.cluster.new_spec["options"])
        options.update(
            nthreads=group.threads,
            memory_limit=group.memory,
            resources={resource_name(tag): TAG_RESOURCE_AMOUNT},
        )
        return {"cls": Nanny, "options": options}

    def _new_names(self, tag: str, count: int) -> list[str]:
        with self._lock:
            names = []
            for _ in range(count):
                self._counter += 1
                names.append(f"{tag}-{self._counter}")
        return names

    def workers(self, tag: str) -> list[str]:
        """Names of the group's workers the cluster has or is starting."""
        assert self.cluster is not None
        prefix = f"{tag}-"
        return [str(name) for name in list(self.cluster.worker_spec) if str(name).startswith(prefix)]

    def scale_up(self, tag: str, count: int) -> list[str]:
        """Start ``count`` more workers for ``tag``; returns their names."""
        assert self.cluster is not None
        if count <= 0:
            return []
        names = self._new_names(tag, count)
        specs = {name: self._spec(tag) for name in names}

        def apply() -> None:
            self.cluster.worker_spec.update(specs)
            self.cluster._correct_state()

        self.cluster.loop.add_callback(apply)
        return names

    def retire(self, client: Client, tag: str, idle: list[str], count: int) -> list[str]:
        """Retire up to ``count`` of the ``idle`` workers of ``tag`` gracefully; returns their names.

        Whether a worker is still idle is checked again on the scheduler, in the same step
        that marks it closing so that it takes no new task (:func:`retire_idle`).
        """
        assert self.cluster is not None
        mine = set(self.workers(tag))
        chosen = [name for name in sorted(idle, key=_newest_first) if name in mine][:count]
        if not chosen:
            return []
        retired = client.run_on_scheduler(retire_idle, names=chosen)
        gone = {str(info.get("name")) for info in (retired or {}).values()}

        def apply() -> None:
            for name in gone:
                self.cluster.worker_spec.pop(name, None)
            self.cluster._correct_state()

        self.cluster.loop.add_callback(apply)
        return sorted(gone)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


def _newest_first(name: str) -> int:
    try:
        return -int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0
