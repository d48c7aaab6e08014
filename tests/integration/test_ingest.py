"""Telemetry ingestion with real ServiceAccount tokens, TokenReview and SubjectAccessReview.

Tokens come from the API server's TokenRequest (the test-support helper); RBAC decides, not
the test: a ServiceAccount bound to a Role that may update ScalableWorkflows in namespace A
can push, the same name in namespace B cannot.
"""

from __future__ import annotations

import json
import secrets

import aiohttp
import kr8s
import yaml

from tests.integration.harness import create, operator_options, running_operator, scalable_workflow
from tests.support.kube import server_side_apply


def _token(kubeconfig_path):
    config = yaml.safe_load(open(kubeconfig_path).read())
    return config["users"][0]["user"]["token"]


async def _grant_update(api, namespace, sa):
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "push-telemetry", "namespace": namespace},
            "rules": [{"apiGroups": ["scalable.dev"], "resources": ["scalableworkflows"], "verbs": ["get", "update"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": f"push-telemetry-{sa}", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "push-telemetry"},
               "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]}
    await server_side_apply(api, role, plural="roles", field_manager="scalable-tests", force=True)
    await server_side_apply(api, binding, plural="rolebindings", field_manager="scalable-tests", force=True)


def _task(i, **extra):
    return {"kind": "task", "task": "simulate", "tag": "default", "submitted_at": 1.7e9 + i, "duration_s": 3.0,
            "peak_memory_bytes": 2**30, "input_features": {"size": i}, **extra}


async def _push(session, url, namespace, name, token=None, body=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with session.post(f"{url}/v1/namespaces/{namespace}/scalableworkflows/{name}/runs", json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_only_callers_allowed_to_update_the_workflow_can_push(kube_api, namespace, sa_kubeconfig, tmp_path):
    other = f"{namespace[:50]}-other"
    await kr8s.asyncio.objects.Namespace({"metadata": {"name": other}}, api=kube_api).create()
    try:
        await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
        allowed = _token(await sa_kubeconfig("client"))
        await _grant_update(kube_api, namespace, "client")
        unbound = _token(await sa_kubeconfig("bystander"))
        # the same ServiceAccount name, with the same Role, but in another namespace
        foreign = _token(await sa_kubeconfig("client", namespace=other))
        await _grant_update(kube_api, other, "client")
        run_id = f"run-{secrets.token_hex(4)}"
        body = {"run": {"run_id": run_id}, "records": [_task(1), _task(2)]}
        runs = tmp_path / namespace / "runs"
        async with running_operator(operator_options(namespace, tmp_path)) as op, aiohttp.ClientSession() as session:
            status, answer = await _push(session, op.ingest_url, namespace, "wf", allowed, body)
            assert (status, answer) == (200, {"run_id": run_id, "accepted": 2, "duplicates": 0})
            lines = (runs / run_id / "tasks.jsonl").read_text().splitlines()
            assert [json.loads(line)["input_features"]["size"] for line in lines] == [1, 2]
            assert json.loads((runs / run_id / "run.json").read_text())["workflow"] == "wf"

            status, answer = await _push(session, op.ingest_url, namespace, "wf", foreign, body)
            assert status == 403 and f"system:serviceaccount:{other}:client" in answer["error"]
            status, answer = await _push(session, op.ingest_url, namespace, "wf", unbound, body)
            assert status == 403
            status, _ = await _push(session, op.ingest_url, namespace, "wf", None, body)
            assert status == 401
            status, _ = await _push(session, op.ingest_url, namespace, "wf", "not-a-token", body)
            assert status == 401

            bad = {"run": {"run_id": run_id}, "records": [_task(3), _task(4, duration_s=-5)]}
            status, answer = await _push(session, op.ingest_url, namespace, "wf", allowed, bad)
            assert status == 400 and answer["refused"][0]["index"] == 1 and "duration_s" in answer["refused"][0]["reason"]
            assert len((runs / run_id / "tasks.jsonl").read_text().splitlines()) == 2, "a refused batch stores nothing"

            status, answer = await _push(session, op.ingest_url, namespace, "missing", allowed, body)
            assert status == 404 and "'missing'" in answer["error"]  # allowed by the Role, but no such workflow
            assert not (tmp_path / other).exists(), "nothing may land in another namespace's directory"
            async with session.get(f"{op.metrics_url}/metrics") as r:
                text = await r.text()
            assert f'scalable_telemetry_records_total{{namespace="{namespace}",result="accepted"}} 2.0' in text
            assert f'scalable_telemetry_records_total{{namespace="{namespace}",result="refused"}} 1.0' in text
    finally:
        try:
            await kr8s.asyncio.objects.Namespace({"metadata": {"name": other}}, api=kube_api).delete()
        except kr8s.NotFoundError:
            pass


async def test_tls_and_audience_bound_tokens(kube_api, namespace, sa_kubeconfig, tmp_path):
    """With --ingest-tls-* and --ingest-audience, tokens travel over TLS and only tokens minted
    for the operator's audience are accepted (a token for the API server is not)."""
    import ssl
    import subprocess

    from tests.support.kube import request_token

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    api_token = _token(await sa_kubeconfig("client"))
    await _grant_update(kube_api, namespace, "client")
    scoped = await request_token(kube_api, namespace, "client", audiences=["scalable"])
    options = operator_options(namespace, tmp_path)
    options.ingest_tls_cert, options.ingest_tls_key, options.ingest_audiences = str(cert), str(key), ["scalable"]
    context = ssl.create_default_context(cafile=str(cert))
    body = {"records": [_task(1)]}
    async with running_operator(options) as op, aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        url = op.ingest_url.replace("http://", "https://")
        status, answer = await _push(session, url, namespace, "wf", scoped, body)
        assert status == 200 and answer["accepted"] == 1
        status, _ = await _push(session, url, namespace, "wf", api_token, body)
        assert status == 401, "a token for the API server's audience must not be accepted"
