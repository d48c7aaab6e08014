"""pytest fixtures for the integration and e2e tiers (registered by tests/conftest.py).

Control plane (session-scoped, started once, only when a test asks for it):
- `kube_cluster`     the running cluster: `.kubeconfig` (Path), `.server`, `.local` (True for the
                     local control plane), `.logs()`; CRDs installed (dask-kubernetes' and ours).
                     When the session holds e2e tests (marker `node`, given to every test under
                     tests/e2e) the local control plane starts with one real node
                     (tests/support/node.py: containerd, kubelet, kube-proxy, CoreDNS), so pods
                     really run; `.node` is that Node.
- `kubeconfig`       str path of an admin kubeconfig; also exported as KUBECONFIG for the session.
- `helm_binary`      Path of the pinned helm.
- `fake_nodes`       names of nodes pods can run on: on the local control plane, kube-scheduler
                     and kwok start (first use only) with 2 fake nodes, so pods get scheduled
                     and turn Running (no container runs); on an external cluster, its nodes.
Per test (function-scoped, async, on the test's own event loop: pytest-asyncio's default
function loop scope; a test marked asyncio(loop_scope="session") cannot use them):
- `kube_api`         a kr8s.asyncio.Api for the admin kubeconfig.
- `namespace`        a fresh namespace (name str), deleted after the test even when it fails.
- `sa_kubeconfig`    factory: `path = await sa_kubeconfig("operator")` creates ServiceAccount
                     "operator" in the test's namespace (or `namespace=`) and writes a kubeconfig
                     that authenticates as it with a TokenRequest token.
e2e (function-scoped):
- `prometheus`       a started PrometheusServer (scrape interval 1 s, no targets yet):
                     `prometheus.add_target("dask", dask_cluster.scheduler_metrics)`.
- `pod_prometheus`   a started Prometheus that discovers the annotated pods of the test's
                     namespace through the API server (kubernetes_sd_configs), labels
                     namespace, pod, cluster, component.
- `node_images`      (session) the locally built images of the real node, by name.
- `dask_kubernetes_controller`  (session) dask-kubernetes' own controller, Helm-installed.
- `dask_cluster`     a started DaskProcesses: a scheduler and 2 workers with /metrics.
- `dask_cluster_factory`  `dask_cluster_factory(n_workers=3, nthreads=2)` for other shapes.

Set SCALABLE_TEST_KUBECONFIG=/path/to/kubeconfig to run the same tests against an existing
cluster (a kind cluster from kind-config.yaml, say) instead of starting the local one.

A missing binary is a test failure naming `make testenv` (or hack/install-system-deps.sh for
prometheus), never a skip.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import kr8s
import kr8s.asyncio
import pytest
import pytest_asyncio

from tests.support.controlplane import ControlPlane, ControlPlaneError
from tests.support.dask_processes import DaskProcesses, DaskProcessError
from tests.support.kube import (
    dask_kubernetes_crd_files,
    install_crds,
    repo_crd_files,
    service_account_kubeconfig,
)
from tests.support.prometheus import PrometheusError, PrometheusServer
from tests.support.testenv import MissingBinaryError, binary

EXTERNAL_KUBECONFIG_ENV = "SCALABLE_TEST_KUBECONFIG"
TESTS_DIR = Path(__file__).resolve().parents[1]


@dataclass
class KubeCluster:
    kubeconfig: Path
    server: str = ""
    local: bool = True
    control_plane: ControlPlane | None = field(default=None, repr=False)
    crds: list[str] = field(default_factory=list)

    @property
    def node(self):
        return self.control_plane.node if self.control_plane else None

    @property
    def ca_file(self) -> Path:
        assert self.control_plane is not None, "only the local control plane has a CA file here"
        return self.control_plane.ca_file

    @property
    def admin_token_file(self) -> Path:
        assert self.control_plane is not None, "only the local control plane has a token file here"
        return self.control_plane.admin_token_file

    def logs(self, lines: int = 40) -> str:
        return self.control_plane.logs(lines) if self.control_plane else "(external cluster: no local logs)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration and tests/e2e get their tier's marker, so
    `-m integration` / `-m "not e2e"` select by directory too."""
    for item in items:
        path = Path(str(item.fspath)).resolve()
        for tier in ("integration", "e2e"):
            if (TESTS_DIR / tier) in path.parents:
                item.add_marker(getattr(pytest.mark, tier))
        if (TESTS_DIR / "e2e") in path.parents:
            item.add_marker(pytest.mark.node)


def _session_needs_node(session: pytest.Session) -> bool:
    return any(item.get_closest_marker("node") for item in session.items)


def _fail(msg: str) -> None:
    pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[KubeCluster]:
    external = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    cp: ControlPlane | None = None
    if external:
        path = Path(external).expanduser().resolve()
        if not path.is_file():
            _fail(f"{EXTERNAL_KUBECONFIG_ENV}={external}: no such kubeconfig file")
        cluster = KubeCluster(kubeconfig=path, local=False)
    else:
        cp = ControlPlane(node=_session_needs_node(request.session))
        try:
            cp.start()
        except MissingBinaryError as e:
            _fail(f"the integration tests need the local control plane: {e}")
        except ControlPlaneError as e:
            _fail(str(e))
        print(f"\n[testenv] control plane up at {cp.server} in {cp.startup_seconds:.1f} s ({cp.workdir})")
        if cp.node is not None:
            print(f"[testenv] node Ready with CoreDNS in {cp.node.startup_seconds:.1f} s")
        cluster = KubeCluster(kubeconfig=cp.kubeconfig, server=cp.server, control_plane=cp)
    try:
        files = dask_kubernetes_crd_files() + repo_crd_files()
        try:
            cluster.crds = asyncio.run(install_crds(cluster.kubeconfig, files))
        except Exception as e:
            _fail(f"installing CRDs from {[str(f) for f in files]} failed: {e!r}\n{cluster.logs()}")
        old = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        try:
            yield cluster
        finally:
            if old is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old
    finally:
        if cp is not None:
            left = cp.stop()
            if left:
                _fail("the node left things behind: " + "; ".join(left))


@pytest.fixture(scope="session")
def kubeconfig(kube_cluster: KubeCluster) -> str:
    return str(kube_cluster.kubeconfig)


@pytest.fixture(scope="session")
def fake_nodes(kube_cluster: KubeCluster) -> list[str]:
    cp = kube_cluster.control_plane
    if cp is None:

        async def node_names() -> list[str]:
            api = await kr8s.asyncio.api(kubeconfig=str(kube_cluster.kubeconfig))
            return [n.name async for n in api.async_get("nodes")]

        return asyncio.run(node_names())
    try:
        return cp.start_fake_nodes(2)
    except MissingBinaryError as e:
        _fail(f"fake nodes need kube-scheduler and kwok: {e}")
    except ControlPlaneError as e:
        _fail(str(e))
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def node_images() -> dict:
    """The images the real node runs (built by `make images`), by name: pause, coredns,
    operator, dask, dask-kubernetes."""
    from tests.support.images import node_images as images

    try:
        return images()
    except MissingBinaryError as e:
        _fail(str(e))
        raise


@pytest.fixture(scope="session")
def dask_kubernetes_controller(kube_cluster: KubeCluster, helm_binary: Path, node_images: dict) -> str:
    """dask-kubernetes' own controller, Helm-installed from its wheel's chart on the real node;
    returns its namespace."""
    from tests.support.dask_kubernetes import CONTROLLER_NAMESPACE, install_controller

    if kube_cluster.node is None and kube_cluster.local:
        _fail("dask-kubernetes' controller needs the real node: run the test under tests/e2e (marker `node`)")
    try:
        install_controller(kube_cluster.kubeconfig, node_images["dask-kubernetes"])
    except RuntimeError as e:
        _fail(f"helm install of dask-kubernetes' controller failed: {e}\n{kube_cluster.logs()}")
    return CONTROLLER_NAMESPACE


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    try:
        return binary("helm")
    except MissingBinaryError as e:
        _fail(str(e))
        raise  # unreachable


@pytest_asyncio.fixture(loop_scope="function")
async def kube_api(kubeconfig: str) -> AsyncIterator[kr8s.asyncio.Api]:
    api = await kr8s.asyncio.api(kubeconfig=kubeconfig)
    yield api


def _namespace_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"t-{base}-{secrets.token_hex(3)}"


@pytest_asyncio.fixture(loop_scope="function")
async def namespace(kube_api: kr8s.asyncio.Api, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    name = _namespace_name(request)
    ns = kr8s.asyncio.objects.Namespace(
        {"metadata": {"name": name, "labels": {"scalable.test/namespace": "true"}}}, api=kube_api
    )
    await ns.create()
    # Pods need the namespace's `default` ServiceAccount, which the controller manager makes.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        async with kube_api.call_api(
            "GET", namespace=name, url="serviceaccounts/default", raise_for_status=False
        ) as r:
            if r.status_code == 200:
                break
        await asyncio.sleep(0.1)
    try:
        yield name
    finally:
        try:
            await ns.delete(propagation_policy="Background")
        except kr8s.NotFoundError:
            pass


@pytest_asyncio.fixture(loop_scope="function")
async def sa_kubeconfig(
    kube_api: kr8s.asyncio.Api, kubeconfig: str, namespace: str, tmp_path: Path
) -> Callable[..., Awaitable[Path]]:
    async def make(name: str, namespace: str = namespace, *, create: bool = True) -> Path:
        return await service_account_kubeconfig(
            kube_api, kubeconfig, namespace, name, tmp_path / f"sa-{namespace}-{name}.kubeconfig", create=create
        )

    return make


def _running_prometheus(server: PrometheusServer, needed_for: str) -> Iterator[PrometheusServer]:
    try:
        server.start()
    except MissingBinaryError as e:
        _fail(f"{needed_for}: {e}")
    except PrometheusError as e:
        _fail(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prometheus() -> Iterator[PrometheusServer]:
    yield from _running_prometheus(PrometheusServer(scrape_interval="1s"), "the e2e tests need Prometheus")


@pytest.fixture
def pod_prometheus(kube_cluster: KubeCluster, namespace: str) -> Iterator[PrometheusServer]:
    """A started upstream Prometheus (scrape interval 1 s) that finds the annotated pods of the
    test's namespace through the API server, as clusters do (kubernetes_sd_configs)."""
    server = PrometheusServer(scrape_interval="1s")
    server.discover_pods(kube_cluster.server, kube_cluster.admin_token_file, kube_cluster.ca_file, namespaces=[namespace])
    yield from _running_prometheus(server, "the e2e tests need Prometheus with Kubernetes discovery")


@pytest.fixture
def dask_cluster_factory() -> Iterator[Callable[..., DaskProcesses]]:
    started: list[DaskProcesses] = []

    def make(n_workers: int = 2, **kwargs) -> DaskProcesses:
        cluster = DaskProcesses(n_workers=n_workers, **kwargs)
        try:
            cluster.start()
        except DaskProcessError as e:
            _fail(str(e))
        started.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for c in started:
            c.stop()


@pytest.fixture
def dask_cluster(dask_cluster_factory: Callable[..., DaskProcesses]) -> DaskProcesses:
    return dask_cluster_factory(n_workers=2)
