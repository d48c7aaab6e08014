"""What runs on the Dask scheduler for the session: queue state per tag, graceful retirement.

Both are plain functions passed to ``Client.run_on_scheduler``, so they work the same for a
LocalCluster and for a DaskCluster on Kubernetes (the scheduler needs scalable installed).
"""

from __future__ import annotations

from typing import Any

__all__ = ["queue_state", "retire_idle"]


def queue_state(dask_scheduler: Any, resources: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Run on the scheduler: per tag, tasks waiting and running on its group, idle workers.

    Tasks with resource restrictions are assigned to a worker at once (they skip the
    scheduler's queue), so a task counts as ``processing`` while a worker thread runs it
    and as ``queued`` while it waits on a worker or, with no worker of its group yet, in
    the scheduler's unrunnable set.
    """
    out = {}
    for tag, resource in resources.items():
        running = waiting = 0
        idle = []
        connected = 0
        for ws in dask_scheduler.workers.values():
            if resource not in ws.resources:
                continue
            connected += 1
            assigned = len(ws.processing)
            busy = min(assigned, ws.nthreads)
            running += busy
            waiting += assigned - busy
            if assigned == 0:
                idle.append(str(ws.name))
        unrunnable = sum(1 for ts in dask_scheduler.unrunnable if resource in (ts.resource_restrictions or {}))
        out[tag] = {"queued": waiting + unrunnable, "processing": running, "idle": idle, "connected": connected}
    return out


async def retire_idle(dask_scheduler: Any, names: list[str]) -> dict[str, Any]:
    """Run on the scheduler: retire those of ``names`` that have no task in flight.

    The idle check and the switch to ``closing_gracefully`` happen in one step of the
    scheduler's event loop, so no task can be assigned in between; data held by the
    workers is moved to others before they leave.
    """
    wanted = set(names)
    addresses = [ws.address for ws in dask_scheduler.workers.values() if str(ws.name) in wanted and not ws.processing]
    if not addresses:
        return {}
    return await dask_scheduler.retire_workers(workers=addresses, close_workers=False, remove=True)
