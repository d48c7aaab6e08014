"""A workflow pod pushes its telemetry to the Helm-installed operator over HTTPS (issue 14, point 1).

The chart is installed with ``ingest.tls.secretName`` (a certificate for the Service's DNS name,
signed by a CA made here) on the real node. A pod of the workflow's namespace, on the operator
image, under a ServiceAccount allowed to update the ScalableWorkflow, runs a real
ScalableSession (a LocalCluster inside the pod) with only ``SCALABLE_TELEMETRY_URL`` and
``SCALABLE_TELEMETRY_CA_FILE`` set: at close the session pushes its run with the pod's mounted
ServiceAccount token, through CoreDNS and kube-proxy, to the operator's PVC. The same pod then
runs ``scalable telemetry push`` of the same runs directory: the operator stores nothing new.
Nothing is written onto the operator's volume by the test.

Rerun: ``flock /tmp/realnode.lock python -m pytest tests/e2e/test_telemetry_push_in_cluster.py -q``
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.e2e.test_operator_in_cluster import RELEASE, _install, _json, _operator_pod, _uninstall
from tests.support.dask_kubernetes import kubectl

CLIENT = '''
import json, sys
from pathlib import Path

from scalable.session.session import ScalableSession


def simulate(i):
    sum(range(10_000 * (i + 1)))
    return i


if __name__ == "__main__":
    Path("/tmp/wf").mkdir(exist_ok=True)
    Path("/tmp/wf/scalable.yaml").write_text(json.dumps({
        "version": 1, "workflow": "wf", "target": "local",
        "worker_groups": [{"tag": "sim", "workers": {"min": 1, "max": 1}, "memory": "512Mi"}],
        "scaling": {"mode": "off", "advisor": "none"},
        "telemetry": {"dir": "./runs", "push": {"deadline_seconds": 60}}}))
    session = ScalableSession.from_yaml("/tmp/wf/scalable.yaml", target="local")
    client = session.start()
    assert client.gather(client.map(simulate, range(int(sys.argv[1])), tag="sim")) == list(range(int(sys.argv[1])))
    session.close()
    r = session.push_report
    print("SESSION " + json.dumps({"run_id": session.run_id, "sent": r.sent, "accepted": r.accepted,
                                   "duplicates": r.duplicates, "remaining": r.remaining, "stopped": r.stopped}), flush=True)
'''


def _certificates(tmp_path, dns_names):
    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt"))
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=scalable-test-ca",
        "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=scalable-operator",  # a CN has at most 64 characters
        "-keyout", str(key), "-out", str(csr))
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in dns_names) + "\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1",
        "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key


def _client_pod(namespace, image_ref, tasks):
    url = f"https://{RELEASE}.{namespace}.svc:8081"
    push = f"scalable telemetry push --runs-dir /tmp/wf/runs --url {url} --workflow {namespace}/wf --json"
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "workflow-client"},
        "spec": {
            "serviceAccountName": "client", "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
            "containers": [{
                "name": "client", "image": image_ref, "imagePullPolicy": "Never",
                "command": ["sh", "-c", f"python /client/client.py {tasks} && echo CLI && {push}"],
                "env": [{"name": "SCALABLE_TELEMETRY_URL", "value": url},
                        {"name": "SCALABLE_TELEMETRY_CA_FILE", "value": "/ca/ca.crt"}],
                "resources": {"limits": {"memory": "1536Mi", "cpu": "1"}, "requests": {"memory": "256Mi", "cpu": "100m"}},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "ca", "mountPath": "/ca"},
                                 {"name": "client", "mountPath": "/client"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "ca", "configMap": {"name": "operator-ca"}},
                        {"name": "client", "configMap": {"name": "workflow-client"}}],
        },
    }


@pytest.mark.timeout(900)
def test_a_workflow_pod_pushes_its_run_over_https_with_its_service_account_token(
    kube_cluster, namespace, node_images, tmp_path,
):
    kubeconfig = kube_cluster.kubeconfig
    volume_dir = kube_cluster.node.workdir / "volumes" / namespace
    pv = f"telemetry-{namespace}"
    service = f"{RELEASE}.{namespace}.svc"
    ca, cert, key = _certificates(tmp_path, [service, f"{service}.cluster.local"])
    kubectl(kubeconfig, "-n", namespace, "create", "secret", "tls", "ingest-tls", f"--cert={cert}", f"--key={key}")
    kubectl(kubeconfig, "-n", namespace, "create", "configmap", "operator-ca", f"--from-file=ca.crt={ca}")
    (tmp_path / "client.py").write_text(CLIENT)
    kubectl(kubeconfig, "-n", namespace, "create", "configmap", "workflow-client", f"--from-file=client.py={tmp_path / 'client.py'}")
    try:
        pv, _ = _install(kubeconfig, namespace, node_images["operator"].ref, volume_dir, tmp_path,
                         extra_values={"ingest": {"tls": {"secretName": "ingest-tls"}}})
        _operator_pod(kubeconfig, namespace)
        workflow = {"apiVersion": "scalable.dev/v1alpha1", "kind": "ScalableWorkflow", "metadata": {"name": "wf"},
                    "spec": {"clusterRef": {"name": "sim"}, "scaling": {"mode": "Off"},
                             "workerGroups": [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 2}]}}
        kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", input=json.dumps(workflow))
        kubectl(kubeconfig, "-n", namespace, "create", "serviceaccount", "client")
        kubectl(kubeconfig, "-n", namespace, "create", "role", "push", "--verb=get,update",
                "--resource=scalableworkflows.scalable.dev")
        kubectl(kubeconfig, "-n", namespace, "create", "rolebinding", "push", "--role=push",
                f"--serviceaccount={namespace}:client")

        tasks = 8
        kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-",
                input=json.dumps(_client_pod(namespace, node_images["operator"].ref, tasks)))
        deadline = time.monotonic() + 400
        phase = None
        while time.monotonic() < deadline:
            phase = _json(kubeconfig, "-n", namespace, "get", "pod", "workflow-client")["status"].get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(2)
        logs = kubectl(kubeconfig, "-n", namespace, "logs", "workflow-client", check=False).stdout
        assert phase == "Succeeded", f"client pod {phase}:\n{logs[-4000:]}"

        session = json.loads(next(line for line in logs.splitlines() if line.startswith("SESSION "))[8:])
        assert session["remaining"] == 0 and session["sent"] >= 1 and session["stopped"] is None, session
        assert session["accepted"] >= tasks and session["duplicates"] == 0, session
        replay = json.loads(logs.split("\nCLI\n", 1)[1])
        assert replay["accepted"] == 0 and replay["duplicates"] == session["accepted"] and replay["remaining"] == 0, replay

        run_dir = volume_dir / namespace / "runs" / session["run_id"]
        stored = [json.loads(line) for line in (run_dir / "tasks.jsonl").read_text().splitlines()]
        assert len(stored) == tasks and {r["task"] for r in stored} == {"simulate"}
        info = json.loads((run_dir / "run.json").read_text())
        assert info["workflow"] == "wf" and info["namespace"] == namespace and info["source"] == "scalable"
    finally:
        _uninstall(kubeconfig, namespace, pv, volume_dir)
