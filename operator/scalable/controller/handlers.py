"""kopf registration, and nothing else: every handler is one call into a module below.

One daemon per object (ScalableWorkflow, AdvisorModel) is the only writer of its status; its
period is read from the object each time, which a ``@kopf.timer`` (fixed interval at
registration) cannot do. Spec changes, and setting or removing the pause annotation, wake the
daemon at once; deletions clean up through a finalizer. Handlers are registered on a fresh
registry per operator, so two operators can share a test process.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from scalable.controller.advisor_model import AdvisorModelLoop
from scalable.controller.dask_objects import paused
from scalable.controller.resources import GROUP, VERSION
from scalable.controller.workflow import WorkflowLoop, cleanup_workflow

__all__ = ["build_registry", "FINALIZER"]

FINALIZER = "scalable.dev/cleanup"


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # $KUBECONFIG (read now, not at import like the kubernetes client does), else in-cluster
        return kopf.login_with_kubeconfig(**kwargs) or kopf.login_with_service_account(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="scalable.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="scalable.dev", key="last-handled-configuration")
        settings.posting.level = logging.WARNING  # our own Events say what happened; kopf's only on trouble
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.daemon(GROUP, VERSION, "scalableworkflows", registry=registry, cancellation_timeout=10)
    async def workflow_daemon(stopped: Any, namespace: str, name: str, memo: Any, **_: Any) -> None:
        await WorkflowLoop(memo.runtime, namespace, name).run(stopped)

    @kopf.on.update(GROUP, VERSION, "scalableworkflows", field="spec", registry=registry)
    def workflow_changed(namespace: str, name: str, memo: Any, **_: Any) -> None:
        memo.runtime.wakeup("ScalableWorkflow", namespace, name).set()

    paused_seen: dict[tuple[str, str], bool] = {}

    @kopf.on.event(GROUP, VERSION, "scalableworkflows", registry=registry)
    def workflow_event(event: Any, body: Any, memo: Any, **_: Any) -> None:
        # The pause annotation is scalable.dev/..., kopf's own storage prefix here, which kopf
        # leaves out of the diff an on.update(field=...) sees: raw watch events tell it instead.
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if event.get("type") == "DELETED":
            paused_seen.pop(key, None)
            return
        now_paused = paused(body)
        if paused_seen.get(key, now_paused) != now_paused:
            memo.runtime.wakeup("ScalableWorkflow", *key).set()
        paused_seen[key] = now_paused

    @kopf.on.delete(GROUP, VERSION, "scalableworkflows", registry=registry)
    async def workflow_deleted(body: Any, memo: Any, logger: Any, **_: Any) -> None:
        cleaned = await cleanup_workflow(memo.runtime, dict(body))
        logger.info("removed the operator's marks from %s; the DaskCluster is left alone", cleaned or "nothing")

    @kopf.daemon(GROUP, VERSION, "advisormodels", registry=registry, cancellation_timeout=10)
    async def advisor_daemon(stopped: Any, namespace: str, name: str, memo: Any, **_: Any) -> None:
        await AdvisorModelLoop(memo.runtime, namespace, name).run(stopped)

    @kopf.on.update(GROUP, VERSION, "advisormodels", field="spec", registry=registry)
    def advisor_changed(namespace: str, name: str, memo: Any, **_: Any) -> None:
        memo.runtime.wakeup("AdvisorModel", namespace, name).set()

    @kopf.on.delete(GROUP, VERSION, "advisormodels", registry=registry)
    def advisor_deleted(namespace: str, name: str, memo: Any, **_: Any) -> None:
        memo.runtime.root.remove_model(namespace, name)
        memo.runtime.advisors.forget(namespace, name)

    return registry
