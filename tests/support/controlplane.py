"""A real Kubernetes control plane as local processes: etcd, kube-apiserver, kube-controller-manager.

This is the one implementation of starting and stopping it; the pytest fixtures use the
`ControlPlane` class, and `make testenv-up` / `make testenv-down` run this module:

    python -m tests.support.controlplane up      # start, print the kubeconfig path, return when ready
    python -m tests.support.controlplane down    # stop everything `up` started and remove its data
    python -m tests.support.controlplane status

What it starts (all on 127.0.0.1, free ports, one temporary directory):
- etcd (pinned, >= 3.5.11), data in <dir>/etcd, fsync off (test data only);
- kube-apiserver with the RBAC authorizer, a service-account issuer and signing key, its
  own self-signed serving certificate in <dir>/apiserver-certs, static bearer tokens for
  the admin (group system:masters) and the controller manager;
- kube-controller-manager (garbage collector, namespace deletion, service-account and
  token controllers, ...), leader election off.

With `node=True` (`up --node`, what `make testenv-up` does) the API server binds to the real
node's bridge address 198.18.0.1 instead of loopback, and kube-scheduler and one real node
start (tests/support/node.py: containerd, kubelet, kube-proxy, CoreDNS), so pods run for real.

Optionally (`ControlPlane.start_fake_nodes(n)`, `up --fake-nodes N`) kube-scheduler and kwok
with n fake nodes, so pods are scheduled and turn Running although no container runs.

It is ready when /readyz answers ok and the controller manager has created the
ServiceAccount `default` in namespace `default` (so its controllers are running).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # `python tests/support/controlplane.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import node as real_node  # noqa: E402
from tests.support import testenv  # noqa: E402
from tests.support.testenv import MissingBinaryError, Proc, binary, free_ports, spawn, tail, terminate  # noqa: E402

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
FAKE_NODE_COMPONENTS = ("kube-scheduler", "kwok")
# Nodes that kwok manages carry this annotation (and label).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message carries each component's log tail."""


def write_kubeconfig(
    path: Path,
    server: str,
    token: str,
    *,
    ca_file: Path | None = None,
    ca_data: str | None = None,
    user: str = "admin",
    namespace: str | None = None,
) -> Path:
    """Write a kubeconfig for a bearer-token user. CA as a file path or base64 data."""
    cluster: dict = {"server": server}
    if ca_data:
        cluster["certificate-authority-data"] = ca_data
    elif ca_file:
        cluster["certificate-authority"] = str(ca_file)
    else:
        cluster["insecure-skip-tls-verify"] = True
    context: dict = {"cluster": "scalable-testenv", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "scalable-testenv", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "scalable-testenv", "context": context}],
        "current-context": "scalable-testenv",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # JSON is YAML; every kubeconfig reader (kubectl, kr8s, kubernetes, kopf) accepts it.
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback.

    >>> cp = ControlPlane().start()       # raises MissingBinaryError / ControlPlaneError
    >>> cp.kubeconfig                     # admin kubeconfig (system:masters)
    >>> cp.logs()                         # last lines of each component's log
    >>> cp.stop()                         # stops the processes, removes the directory
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        controller_manager: bool = True,
        die_with_parent: bool = True,
        keep_workdir: bool = False,
        extra_apiserver_args: list[str] | tuple[str, ...] = (),
        node: bool = False,
        node_timeout: float = 600.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="scalable-testenv-"))
        self.controller_manager = controller_manager
        self.die_with_parent = die_with_parent
        self.keep_workdir = keep_workdir
        # Extra kube-apiserver flags, appended last (e.g. --audit-policy-file/--audit-log-path).
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.procs: list[Proc] = []
        self.server = ""
        self.admin_token = ""
        self.startup_seconds: float | None = None
        self.fake_nodes: list[str] = []
        self.with_node = node
        self.node_timeout = node_timeout
        self.node: real_node.Node | None = None
        self.network_state: dict | None = None

    # -- paths ------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def cert_dir(self) -> Path:
        return self.workdir / "apiserver-certs"

    @property
    def ca_file(self) -> Path:
        # kube-apiserver writes a self-signed CA and the serving certificate it signed,
        # both in this file; the CA in it verifies the server.
        return self.cert_dir / "apiserver.crt"

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    @property
    def admin_token_file(self) -> Path:
        """The admin's bearer token in a file (Prometheus' kubernetes_sd_configs reads it)."""
        path = self.workdir / "admin.token"
        if not path.exists():
            path.write_text(self.admin_token)
            path.chmod(0o600)
        return path

    # -- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> "ControlPlane":
        t0 = time.monotonic()
        try:
            bins = {name: binary(name) for name in COMPONENTS}  # MissingBinaryError first
            if not shutil.which("openssl"):
                raise MissingBinaryError("openssl is not on PATH; run `hack/install-system-deps.sh`")
            if self.with_node:
                bins |= {name: binary(name) for name in ("kube-scheduler", "kubelet", "kube-proxy")}
                real_node.require_node_tools()
                from tests.support.images import node_images

                node_images(check_inputs=False)  # the node needs pause and coredns; tests check the rest
        except MissingBinaryError:
            self.stop()  # removes the (empty) directory it made
            raise
        try:
            if self.with_node:
                # May wait for another node to go away; the start-up clock runs after that.
                self.network_state = real_node.NodeNetwork().up(self.workdir / "node-network").state
                t0 = time.monotonic()
            self._start(bins, t0 + timeout)
        except BaseException as exc:
            report = self.logs()
            self.stop()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise ControlPlaneError(f"the local control plane did not start: {exc}\n{report}") from exc
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start(self, bins: dict[str, Path], deadline: float) -> None:
        wd = self.workdir
        (wd / "logs").mkdir(parents=True, exist_ok=True)
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        etcd_port, etcd_peer, api_port, kcm_port = free_ports(4)
        # With a real node, pods reach the API server (through the `kubernetes` Service) at
        # the node's bridge address, so it listens there rather than on loopback.
        address = real_node.NODE_IP if self.with_node else "127.0.0.1"
        self.server = f"https://{address}:{api_port}"

        # Service-account signing key (also verifies tokens, and the controller manager
        # signs legacy token secrets with it).
        sa_key = wd / "sa.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(sa_key), "2048"],
            check=True,
            capture_output=True,
        )
        self.admin_token = secrets.token_hex(16)
        kcm_token = secrets.token_hex(16)
        tokens = wd / "tokens.csv"
        kubelet_token, proxy_token = real_node.node_tokens()
        tokens.write_text(
            f'{self.admin_token},admin,uid-admin,"system:masters"\n'
            f'{kcm_token},system:kube-controller-manager,uid-kcm,"system:masters"\n'
            f'{kubelet_token},system:node:{real_node.NODE_NAME},uid-node,"system:nodes"\n'
            f"{proxy_token},system:kube-proxy,uid-kube-proxy\n"
        )
        tokens.chmod(0o600)

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        self._spawn(
            "etcd",
            [
                str(bins["etcd"]),
                "--name=testenv",
                f"--data-dir={wd / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=testenv={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        node_args: list[str] = []
        if self.with_node:
            client_ca, client_crt, client_key = real_node.kubelet_client_certificates(wd / "kubelet-client-pki")
            node_args = [
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={client_crt}",
                f"--kubelet-client-key={client_key}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            node_args = [
                "--authorization-mode=RBAC",
                # The `kubernetes` Service cannot point at a loopback address; no pod
                # needs it here, so do not reconcile its endpoints (and log errors).
                "--endpoint-reconciler-type=none",
            ]
        self._spawn(
            "kube-apiserver",
            [
                str(bins["kube-apiserver"]),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--secure-port={api_port}",
                f"--cert-dir={self.cert_dir}",
                f"--token-auth-file={tokens}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={real_node.SERVICE_CIDR}",
                "--allow-privileged=true",
                *node_args,
                "--profiling=false",
                "--v=1",
                *self.extra_apiserver_args,
            ],
        )
        self._wait_ready(deadline)

        # The CA exists now; from here on clients verify the server.
        write_kubeconfig(self.kubeconfig, self.server, self.admin_token, ca_file=self.ca_file)
        if self.controller_manager:
            kcm_kubeconfig = write_kubeconfig(
                wd / "kube-controller-manager.kubeconfig",
                self.server,
                kcm_token,
                ca_file=self.ca_file,
                user="system:kube-controller-manager",
            )
            self._spawn(
                "kube-controller-manager",
                [
                    str(bins["kube-controller-manager"]),
                    f"--kubeconfig={kcm_kubeconfig}",
                    f"--authentication-kubeconfig={kcm_kubeconfig}",
                    f"--authorization-kubeconfig={kcm_kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={kcm_port}",
                    f"--cert-dir={wd / 'kcm-certs'}",
                    "--leader-elect=false",
                    f"--service-account-private-key-file={sa_key}",
                    f"--root-ca-file={self.ca_file}",
                    "--use-service-account-credentials=false",
                    "--concurrent-gc-syncs=5",
                    "--v=1",
                ],
            )
            self._wait_controller_manager(deadline)
        if self.with_node:
            self._start_scheduler()
            self.node = real_node.Node(
                wd / "node",
                server=self.server,
                ca_file=self.ca_file,
                kubelet_token=kubelet_token,
                proxy_token=proxy_token,
                kubelet_client_ca=client_ca,
                admin_kubeconfig=self.kubeconfig,
                die_with_parent=self.die_with_parent,
            )
            self.node.start(time.monotonic() + self.node_timeout)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.log_path(name)
        popen = spawn(argv, log, die_with_parent=self.die_with_parent)
        self.procs.append(Proc(name, popen.pid, str(log), popen, argv))

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.popen is not None and p.popen.poll() is not None:
                raise ControlPlaneError(f"{p.name} exited with code {p.popen.returncode}")

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file.exists() else None
        if ctx is None:
            ctx = ssl._create_unverified_context()  # before the serving cert exists
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.admin_token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def _wait_ready(self, deadline: float) -> None:
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                code, body = self._get("/readyz")
                if code == 200:
                    return
                last = f"HTTP {code}: {body[-500:]}"
            except (OSError, ssl.SSLError) as e:
                last = repr(e)
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver /readyz not ok in time (last: {last})")

    def _wait_controller_manager(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            code, _ = self._get("/api/v1/namespaces/default/serviceaccounts/default")
            if code == 200:
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            "kube-controller-manager did not create the default ServiceAccount in time"
        )

    # -- fake nodes -------------------------------------------------------------------
    def start_fake_nodes(self, count: int = 2, *, cpu: str = "16", memory: str = "64Gi", timeout: float = 60.0) -> list[str]:
        """Start kube-scheduler and kwok, and create `count` fake nodes that kwok keeps Ready,
        so pods get scheduled and turn Running (no containers run: there is no kubelet).
        Returns the node names. Idempotent for the processes; adds nodes up to `count`."""
        deadline = time.monotonic() + timeout
        names = [p.name for p in self.procs]
        try:
            if "kwok" not in names:
                bins = {name: binary(name) for name in FAKE_NODE_COMPONENTS}
                kubeconfig = self._start_scheduler()
                (kwok_port,) = free_ports(1)
                key, value = KWOK_NODE_ANNOTATION
                self._spawn(
                    "kwok",
                    [
                        str(bins["kwok"]),
                        f"--kubeconfig={kubeconfig}",
                        "--manage-all-nodes=false",
                        f"--manage-nodes-with-annotation-selector={key}={value}",
                        f"--server-address=127.0.0.1:{kwok_port}",
                        # Addresses kwok only writes into pod status; nothing routes to them.
                        "--cidr=198.18.128.0/17",
                        "--node-ip=198.18.128.1",
                        "-v=WARN",
                    ],
                )
            nodes = [f"kwok-node-{i}" for i in range(count)]
            for node in nodes:
                self._ensure_fake_node(node, cpu, memory)
            for node in nodes:
                self._wait_node_ready(node, deadline)
            self.fake_nodes = sorted(set(self.fake_nodes) | set(nodes))
            return nodes
        except MissingBinaryError:
            raise
        except Exception as exc:
            raise ControlPlaneError(f"fake nodes did not come up: {exc}\n{self.logs()}") from exc

    def _start_scheduler(self) -> Path:
        """kube-scheduler (once), under the controller manager's credentials; returns that
        kubeconfig."""
        kubeconfig = self.workdir / "kube-controller-manager.kubeconfig"
        if not kubeconfig.exists():
            raise ControlPlaneError("start the control plane (with the controller manager) first")
        if "kube-scheduler" not in [p.name for p in self.procs]:
            (sched_port,) = free_ports(1)
            self._spawn(
                "kube-scheduler",
                [
                    str(binary("kube-scheduler")),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={sched_port}",
                    "--leader-elect=false",
                    "--v=1",
                ],
            )
        return kubeconfig

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def _ensure_fake_node(self, name: str, cpu: str, memory: str) -> None:
        key, value = KWOK_NODE_ANNOTATION
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            },
        }
        code, body = self._request("POST", "/api/v1/nodes", node)
        if code not in (201, 409):
            raise ControlPlaneError(f"creating node {name}: HTTP {code}: {body.get('message')}")

    def _wait_node_ready(self, name: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            code, body = self._request("GET", f"/api/v1/nodes/{name}")
            conds = {c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions") or []}
            if code == 200 and conds.get("Ready") == "True":
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"node {name} not Ready in time (kwok manages it)")

    def stop(self) -> list[str]:
        """Stop the node (if any), then every component (controller manager first), take the
        node's network away, remove the directory. Returns what the node could not remove."""
        problems: list[str] = []
        if self.node is not None:
            problems += self.node.stop()
            self.node = None
        for p in reversed(self.procs):
            terminate(p.pid, timeout=10.0, proc=p.popen)
        self.procs.clear()
        if self.network_state is not None:
            problems += real_node.NodeNetwork.down(self.network_state)
            self.network_state = None
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return problems

    def logs(self, lines: int = 40) -> str:
        """The last lines of each component's log, headed by its name."""
        out = []
        for name in COMPONENTS + FAKE_NODE_COMPONENTS:
            path = self.log_path(name)
            if path.exists():
                out.append(f"----- last {lines} lines of {name} ({path}) -----\n{tail(path, lines)}")
        node_logs = real_node.Node.logs_in(self.workdir / "node", lines)
        if node_logs:
            out.append(node_logs)
        return "\n".join(out) or "(no component logs)"

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state for `up` / `down` ------------------------------------------------------
    def state(self) -> dict:
        return {
            "workdir": str(self.workdir),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "procs": [{"name": p.name, "pid": p.pid, "log": p.log} for p in self.procs],
            "fake_nodes": self.fake_nodes,
            "node": self.node.state() if self.node else None,
            "network": self.network_state,
        }


# ---------------------------------------------------------------------------------------
# make testenv-up / testenv-down
# ---------------------------------------------------------------------------------------
def _run_dir() -> Path:
    return testenv.testenv_dir() / "run"


def _state_file() -> Path:
    return _run_dir() / "controlplane.json"


def _ours(pid: int, workdir: str) -> bool:
    """Is pid still one of the processes `up` started (its command line names our dir)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return workdir in cmdline


def cmd_up(args: argparse.Namespace) -> int:
    state_file = _state_file()
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if any(_ours(p["pid"], state["workdir"]) for p in state["procs"]):
            print(f"control plane already running at {state['server']}", file=sys.stderr)
            print(f"export KUBECONFIG={_run_dir() / 'kubeconfig'}")
            return 0
        cmd_down(args)  # stale state from a crash: clean it up first
    cp = ControlPlane(
        Path(tempfile.mkdtemp(prefix="scalable-testenv-up-")),
        controller_manager=not args.no_controller_manager,
        die_with_parent=False,
        node=args.node,
    )
    cp._own_workdir = True
    try:
        cp.start(timeout=args.timeout)
        if args.fake_nodes:
            cp.start_fake_nodes(args.fake_nodes)
    except MissingBinaryError as e:
        cp.stop()
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except (ControlPlaneError, real_node.NodeError) as e:
        cp.stop()
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    _run_dir().mkdir(parents=True, exist_ok=True)
    stable = _run_dir() / "kubeconfig"
    shutil.copyfile(cp.kubeconfig, stable)
    stable.chmod(0o600)
    state = cp.state() | {"stable_kubeconfig": str(stable), "startup_seconds": cp.startup_seconds}
    state_file.write_text(json.dumps(state, indent=2) + "\n")
    print(f"control plane ready at {cp.server} in {cp.startup_seconds:.1f} s", file=sys.stderr)
    if cp.node is not None:
        print(f"node {real_node.NODE_NAME} Ready with CoreDNS in {cp.node.startup_seconds:.1f} s", file=sys.stderr)
    print(f"logs: {cp.workdir / 'logs'}", file=sys.stderr)
    print(f"kubeconfig: {stable}", file=sys.stderr)
    print(f"export KUBECONFIG={stable}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_file = _state_file()
    if not state_file.exists():
        print("no control plane started by `make testenv-up` is recorded; nothing to stop", file=sys.stderr)
        return 0
    state = json.loads(state_file.read_text())
    problems: list[str] = []
    if state.get("node"):
        print(f"stopping node {real_node.NODE_NAME}", file=sys.stderr)
        problems += real_node.shutdown(state["node"])
    for p in reversed(state["procs"]):
        if _ours(p["pid"], state["workdir"]):
            print(f"stopping {p['name']} (pid {p['pid']})", file=sys.stderr)
            terminate(p["pid"], timeout=10.0)
    if state.get("network"):
        problems += real_node.NodeNetwork.down(state["network"])
    shutil.rmtree(state["workdir"], ignore_errors=True)
    Path(state.get("stable_kubeconfig", _run_dir() / "kubeconfig")).unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    if problems:
        print("left behind:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("control plane stopped and its data removed", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_file = _state_file()
    if not state_file.exists():
        print("not running")
        return 1
    state = json.loads(state_file.read_text())
    alive = {p["name"]: _ours(p["pid"], state["workdir"]) for p in state["procs"]}
    print(json.dumps(state | {"alive": alive}, indent=2))
    return 0 if all(alive.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.controlplane", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver, kube-controller-manager; print the kubeconfig")
    up.add_argument("--timeout", type=float, default=90.0)
    up.add_argument("--no-controller-manager", action="store_true")
    up.add_argument(
        "--node", action="store_true",
        help="also start one real node (containerd, kubelet, kube-proxy, CoreDNS), so pods really run",
    )
    up.add_argument(
        "--fake-nodes", type=int, default=0, metavar="N",
        help="also start kube-scheduler and kwok with N fake nodes, so pods turn Running",
    )
    sub.add_parser("down", help="stop what `up` started and remove its data")
    sub.add_parser("status", help="show what `up` started")
    args = parser.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
