"""The real node itself: pods run in containers, reach each other through Services and cluster
DNS, stay on the node's own addresses (198.18.0.0/15, no default route), and a container that
outgrows its memory limit is killed by the kernel."""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.request

from tests.support.dask_kubernetes import kubectl
from tests.support.images import node_images
from tests.support.node import ADDRESS_SPACE, POD_CIDR, SERVICE_CIDR

PROBE = r"""
import json, socket, urllib.request
name = "web.{ns}.svc.cluster.local"
out = {"resolved": socket.gethostbyname(name)}
with urllib.request.urlopen(f"http://web:8080/hello.txt", timeout=10) as r:
    out["status"], out["body"] = r.status, r.read().decode()
def addr(hex_le):
    return socket.inet_ntoa(bytes.fromhex(hex_le)[::-1])
out["routes"] = [[addr(r[1]), addr(r[7])] for r in (line.split() for line in open("/proc/net/route").read().splitlines()[1:])]
out["resolv"] = open("/etc/resolv.conf").read()
print(json.dumps(out))
"""


def _pod(name: str, image: str, command: list[str], *, labels: dict | None = None, memory: str | None = None,
         restart: str = "Never") -> dict:
    container = {"name": "main", "image": image, "imagePullPolicy": "Never", "command": command,
                 "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                     "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                 "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}
    if memory:
        container["resources"] = {"requests": {"memory": memory, "cpu": "100m"}, "limits": {"memory": memory}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"restartPolicy": restart, "containers": [container], "volumes": [{"name": "tmp", "emptyDir": {}}],
                     "terminationGracePeriodSeconds": 1}}


def _apply(kubeconfig, namespace, *objs):
    kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", input="\n".join(json.dumps(o) for o in objs))


def _wait_pod(kubeconfig, namespace, name, done, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    pod = {}
    while time.monotonic() < deadline:
        r = kubectl(kubeconfig, "-n", namespace, "get", "pod", name, "-o", "json", check=False)
        if r.returncode == 0:
            pod = json.loads(r.stdout)
            if done(pod):
                return pod
        time.sleep(0.5)
    events = kubectl(kubeconfig, "-n", namespace, "get", "events", check=False).stdout
    raise AssertionError(f"pod {name}: {what} not reached in {timeout}s: {pod.get('status')}\n{events}")


def _terminated(pod):
    for status in pod.get("status", {}).get("containerStatuses") or []:
        state = status.get("state", {}).get("terminated") or status.get("lastState", {}).get("terminated")
        if state:
            return state
    return None


def test_pods_reach_each_other_through_a_service_and_cluster_dns_on_the_nodes_own_addresses(kube_cluster, namespace):
    kubeconfig = kube_cluster.kubeconfig
    image = node_images()["dask"].ref
    web = _pod("web", image, ["sh", "-c", "echo hello-from-web > /tmp/hello.txt && cd /tmp && exec python -m http.server 8080"],
               labels={"app": "web"}, restart="Always")
    web["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/hello.txt", "port": 8080}, "periodSeconds": 1}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": 8080}]}}
    _apply(kubeconfig, namespace, web, service)
    ready = _wait_pod(kubeconfig, namespace, "web", lambda p: any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])), what="Ready")
    pod_ip = ipaddress.ip_address(ready["status"]["podIP"])
    assert pod_ip in ipaddress.ip_network(POD_CIDR)
    cluster_ip = json.loads(kubectl(kubeconfig, "-n", namespace, "get", "service", "web", "-o", "json").stdout)["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(SERVICE_CIDR)

    # The host reaches pods over the bridge.
    with urllib.request.urlopen(f"http://{pod_ip}:8080/hello.txt", timeout=10) as r:
        assert r.read().decode().strip() == "hello-from-web"

    _apply(kubeconfig, namespace, _pod("probe", image, ["python", "-c", PROBE.replace("{ns}", namespace)]))
    _wait_pod(kubeconfig, namespace, "probe", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), what="finished")
    logs = kubectl(kubeconfig, "-n", namespace, "logs", "probe").stdout
    out = json.loads(logs.strip().splitlines()[-1])
    assert out["resolved"] == cluster_ip, out
    assert (out["status"], out["body"].strip()) == (200, "hello-from-web")
    # Every route a pod has stays inside the node's address space: no default route off it.
    space = ipaddress.ip_network(ADDRESS_SPACE)
    assert out["routes"], out
    for destination, mask in out["routes"]:
        network = ipaddress.ip_network(f"{destination}/{mask}")
        assert network.prefixlen > 0 and network.subnet_of(space), f"route {network} leaves {space}: {out['routes']}"
    assert "nameserver 198.19.0.10" in out["resolv"] and out["resolv"].count("nameserver") == 1


def test_a_container_over_its_memory_limit_is_killed_by_the_kernel(kube_cluster, namespace):
    kubeconfig = kube_cluster.kubeconfig
    image = node_images()["dask"].ref
    hog = "b = bytearray(400 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')"
    _apply(kubeconfig, namespace, _pod("hog", image, ["python", "-c", hog], memory="96Mi"))
    pod = _wait_pod(kubeconfig, namespace, "hog", _terminated, what="terminated")
    state = _terminated(pod)
    assert state["reason"] == "OOMKilled" and state["exitCode"] == 137, state
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == "96Mi"
