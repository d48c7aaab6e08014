"""AdvisorModel: trained in a separate process from the namespace's telemetry, then served.

The operator trains on the runs in its volume, reports what it trained in status, and a
ScalableWorkflow that references the model sizes with it (method "learned", its version).
"""

from __future__ import annotations

from tests.integration.harness import (
    SCALABLE,
    condition,
    create,
    create_dask_cluster,
    get,
    operator_options,
    running_operator,
    scalable_workflow,
    wait_until,
    write_history,
)


def advisor_model(name, **spec):
    return {"apiVersion": SCALABLE, "kind": "AdvisorModel", "metadata": {"name": name},
            "spec": {"coverage": 0.9, "minHistory": 5, "retrainInterval": "1h", **spec}}


async def _phase(api, namespace, name, phase):
    obj = await get(api, namespace, "AdvisorModel", name)
    return obj if obj and (obj.get("status") or {}).get("phase") == phase else None


async def test_training_reports_in_status_and_the_workflow_uses_the_model(kube_api, namespace, tmp_path):
    write_history(tmp_path / namespace / "runs", n=150, peak_gib=3.0, spread=0.3)
    await create(kube_api, namespace, advisor_model("demand"))
    await create(kube_api, namespace, advisor_model("nothing-yet", telemetry={"tasks": ["never-ran"]}))
    await create_dask_cluster(kube_api, namespace, "sim")
    await create(kube_api, namespace, scalable_workflow("wf", "sim", advisor_model="demand", scaling={"mode": "Off"}))
    async with running_operator(operator_options(namespace, tmp_path)):
        model = await wait_until(lambda: _phase(kube_api, namespace, "demand", "Ready"), timeout=180, what="AdvisorModel Ready")
        status = model["status"]
        assert status["modelVersion"] == "v1" and status["records"] == 150 and status["runs"] == 1
        assert status["trainedAt"] and status["observedGeneration"] == model["metadata"]["generation"]
        assert 0 <= status["quality"]["coverage"] <= 1 and "promised 90%" in status["coverage"]
        assert status["decision"] == "first model: promoted"
        assert condition(model, "Trained")["reason"] == "Promoted"
        assert (tmp_path / namespace / "models" / "demand" / "champion.json").is_file()

        empty = await wait_until(lambda: _phase(kube_api, namespace, "nothing-yet", "InsufficientData"), timeout=120,
                                 what="InsufficientData")
        assert "minHistory" in empty["status"]["decision"]

        async def learned():
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            groups = (wf.get("status") or {}).get("groups") or [{}]
            rec = groups[0].get("recommendation") or {}
            return wf if rec.get("method") == "learned" else None

        wf = await wait_until(learned, timeout=60, what="sized by the learned model")
        assert wf["status"]["groups"][0]["recommendation"]["modelVersion"] == "v1"
        assert condition(wf, "ModelReady")["status"] == "True"
        assert float(wf["status"]["confidence"]) > 0


async def test_predictive_scaling_uses_the_models_durations(kube_api, namespace, tmp_path, prometheus):
    from scalable.controller.scrape_labels import scope_labels
    from tests.integration.harness import QueueExporter, job_queries

    write_history(tmp_path / namespace / "runs", n=150, duration_s=20.0, spread=0.2)
    # enough queued work that even at maxWorkers some is left when a new worker could join: the
    # predicted load of a later poll (after a scale-up) is then above 0 too
    exporter = await QueueExporter(queued=60, processing=1).start()
    prometheus.add_target("q", exporter.address, labels=scope_labels(namespace, "sim"))
    await create(kube_api, namespace, advisor_model("demand"))
    await create_dask_cluster(kube_api, namespace, "sim")
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 10, "resourcePolicy": {"mode": "Off"}}]
    scaling = {"mode": "Predictive", "pollIntervalSeconds": 1, "cooldownSeconds": 0,
               "prometheus": {"queries": job_queries("q"), "timeoutSeconds": 2}}
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=scaling, advisor_model="demand"))
    try:
        async with running_operator(operator_options(namespace, tmp_path, prometheus_url=prometheus.url)):
            async def predictive():
                wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
                decision = ((wf.get("status") or {}).get("groups") or [{}])[0].get("lastDecision") or {}
                # a decision from a poll before Prometheus scraped the queue sees none, rightly
                # predicting no load: wait for one that saw the exporter's queued tasks
                return wf if decision.get("mode") == "predictive" and (decision.get("queued") or 0) > 0 else None

            wf = await wait_until(predictive, timeout=240, what="a predictive decision on the queue")
            decision = wf["status"]["groups"][0]["lastDecision"]
            assert decision["predictedLoad"] is not None and decision["predictedLoad"] > 0
            assert 0 < decision["confidence"] <= 1
            assert "predicted" in decision["reason"]
            cluster = await get(kube_api, namespace, "DaskCluster", "sim")
            assert 1 <= cluster["spec"]["worker"]["replicas"] <= 10
    finally:
        await exporter.stop()
