"""One real Kubernetes node as local processes: containerd, runc, kubelet, kube-proxy, a CNI
bridge, and CoreDNS in a pod.

Pods run for real here (real containers, real cgroup memory limits, real OOM kills), on
addresses that exist only on this machine:

- the bridge `scalable0` holds the node's address 198.18.0.1/24; pods get 198.18.0.10 and up
  (host-local IPAM) and a route for 198.18.0.0/15 through the bridge, and no default route;
- Services get ClusterIPs in 198.19.0.0/24 (kube-proxy, iptables mode); cluster DNS is the
  `kube-dns` Service at 198.19.0.10 (CoreDNS with the kubernetes plugin and no upstream);
- forwarding in and out of the bridge to any other interface is dropped, and nothing is
  masqueraded to the outside.

The control plane (tests/support/controlplane.py) creates the bridge before its API server
binds to 198.18.0.1, then starts this node; `stop()` (and `cleanup()` after a crash, from the
state recorded by `make testenv-up`) leaves nothing behind: no processes, mounts, cgroups,
bridge, veths, netns, iptables rules or changed sysctls.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.testenv import MissingBinaryError, Proc, binary, free_ports, spawn, tail, terminate

BRIDGE = "scalable0"
NODE_NAME = "scalable-node"
NODE_IP = "198.18.0.1"
POD_CIDR = "198.18.0.0/24"
POD_RANGE_START = "198.18.0.10"
SERVICE_CIDR = "198.19.0.0/24"
CLUSTER_DNS_IP = "198.19.0.10"
ADDRESS_SPACE = "198.18.0.0/15"
CLUSTER_DOMAIN = "cluster.local"
# Sockets need short paths (108 bytes), so they live here rather than in the work directory.
RUN_DIR = Path("/run/scalable-node")
IPTABLES_COMMENT = "scalable-node"

NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy")
# Debian packages the node needs, by the command that shows they are there.
NODE_PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "ip": "iproute2",
    "conntrack": "conntrack",
}
CNI_BIN_DIR = Path("/usr/lib/cni")
# Kernel settings the node changes; their old values are put back when it stops.
SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
}
# The kubelet sets these itself on start (its kernel tunables); remember them too.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/conf/all/route_localnet",
)
NODE_HINT = "run `make testenv` (it builds kubelet, kube-proxy and CoreDNS) and `make images`"


class NodeError(RuntimeError):
    """The node did not come up; the message carries each component's log tail."""


def _run(argv: list[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, input=input)


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def _read_sysctl(key: str) -> str | None:
    try:
        return _sysctl_path(key).read_text().strip()
    except OSError:
        return None


def _write_sysctl(key: str, value: str) -> None:
    try:
        _sysctl_path(key).write_text(value + "\n")
    except OSError:
        pass


def require_node_tools() -> None:
    """MissingBinaryError naming the install script when a Debian tool the node needs is absent."""
    missing = sorted({pkg for cmd, pkg in NODE_PACKAGES.items() if not shutil.which(cmd)})
    if not CNI_BIN_DIR.joinpath("bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        raise MissingBinaryError(
            f"the real node needs the Debian packages {', '.join(missing)}; run `hack/install-system-deps.sh`"
        )
    if os.geteuid() != 0:
        raise MissingBinaryError("the real node needs root (containerd, kubelet, bridges, iptables)")


def memory_cgroup() -> str:
    """This process's cgroup v1 memory path: pods go below it, so they stay inside whatever
    limits the machine puts on us (and are easy to find and remove)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    raise NodeError("no cgroup v1 memory controller: the node needs cgroup v1 with the memory controller")


def _cgroup_controller_dirs() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "cgroup.procs").exists())


# ---------------------------------------------------------------------------------------
# The network: a bridge, routes, sysctls and firewall rules, and how to take them away
# ---------------------------------------------------------------------------------------
@dataclass
class NodeNetwork:
    """The node's bridge and the host-side rules around it. `up()` records what it changed in
    `state` so `down(state)` can put it back, even from another process."""

    state: dict = field(default_factory=dict)

    def up(self, workdir: Path, *, wait: float | None = None) -> "NodeNetwork":
        """Create the bridge (the machine-wide claim on the node's addresses: only one node
        can run at a time), then the rules around it. With another node running it waits up
        to `wait` seconds (default $SCALABLE_NODE_WAIT, else 0) for it to go away."""
        require_node_tools()
        wait = float(os.environ.get("SCALABLE_NODE_WAIT", "0")) if wait is None else wait
        deadline = time.monotonic() + wait
        while True:
            created = _run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=False)
            if created.returncode == 0:
                break
            if not Path(f"/sys/class/net/{BRIDGE}").exists():
                raise NodeError(f"ip link add {BRIDGE} type bridge: {created.stderr.strip()}")
            if time.monotonic() >= deadline:
                raise NodeError(
                    f"bridge {BRIDGE} already exists: another node is running here (stop it with "
                    "`make testenv-down`, or set SCALABLE_NODE_WAIT=<seconds> to wait for it)"
                )
            time.sleep(2)
        try:
            self._configure(workdir)
        except BaseException:
            NodeNetwork.down(self.state)
            raise
        return self

    def _configure(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        # Holding the bridge, no other node runs: chains a crashed one left are not ours to keep.
        _remove_kube_chains()
        _delete_our_forward_rules()
        saved = workdir / "iptables.before"
        saved.write_text(_run(["iptables-save"]).stdout)
        self.state = {
            "iptables_before": str(saved),
            "sysctls_before": {k: _read_sysctl(k) for k in (*SYSCTLS, *KUBELET_SYSCTLS)},
        }
        _run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        # Service addresses go to the bridge even before kube-proxy has its rules, never to
        # the default route.
        _run(["ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP])
        for key, value in SYSCTLS.items():
            _write_sysctl(key, value)
        # Pods talk to each other, to Services and to this host; nothing is forwarded
        # between the bridge and any other interface.
        for rule in (
            ["-i", BRIDGE, "!", "-o", BRIDGE],
            ["!", "-i", BRIDGE, "-o", BRIDGE],
        ):
            _run(["iptables", "-I", "FORWARD", *rule, "-m", "comment", "--comment", IPTABLES_COMMENT, "-j", "DROP"])

    @staticmethod
    def down(state: dict) -> list[str]:
        """Take the bridge, veths, routes, rules and sysctls back; return what it could not."""
        problems: list[str] = []
        _remove_kube_chains()
        _delete_our_forward_rules()
        # Then the tables exactly as they were (an empty snapshot: there were none to restore).
        saved = state.get("iptables_before")
        if saved and Path(saved).exists() and Path(saved).read_text().strip():
            r = _run(["iptables-restore"], check=False, input=Path(saved).read_text())
            if r.returncode:
                problems.append(f"iptables-restore: {r.stderr.strip()}")
        for table in ("filter", "nat", "mangle"):
            left = [r for r in _run(["iptables", "-t", table, "-S"], check=False).stdout.splitlines()
                    if "KUBE-" in r or IPTABLES_COMMENT in r]
            if left:
                problems.append(f"iptables -t {table} still has: {left[:3]}")
        for key, value in (state.get("sysctls_before") or {}).items():
            if value is not None and _read_sysctl(key) != value:
                _write_sysctl(key, value)
        # The bridge last: it is the claim another node waits on.
        for link in _links_on_bridge():
            _run(["ip", "link", "del", link], check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            r = _run(["ip", "link", "del", BRIDGE], check=False)
            if r.returncode:
                problems.append(f"ip link del {BRIDGE}: {r.stderr.strip()}")
        return problems


def _links_on_bridge() -> list[str]:
    brif = Path(f"/sys/class/net/{BRIDGE}/brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def _remove_kube_chains() -> None:
    """Flush and delete the KUBE-* chains kube-proxy and the kubelet made, in every table
    (a table that did not exist before would survive iptables-restore)."""
    for table in ("filter", "nat", "mangle"):
        rules = _run(["iptables", "-t", table, "-S"], check=False).stdout.splitlines()
        for rule in rules:
            parts = shlex.split(rule)
            if parts[:1] == ["-A"] and any(p.startswith("KUBE-") for p in parts[2:]) and not parts[1].startswith("KUBE-"):
                _run(["iptables", "-t", table, "-D", *parts[1:]], check=False)
        chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
        for chain in chains:
            _run(["iptables", "-t", table, "-F", chain], check=False)
        for chain in chains:
            _run(["iptables", "-t", table, "-X", chain], check=False)


def _delete_our_forward_rules() -> None:
    for rule in _run(["iptables", "-S", "FORWARD"], check=False).stdout.splitlines():
        if IPTABLES_COMMENT in rule and rule.startswith("-A "):
            _run(["iptables", "-D", *shlex.split(rule)[1:]], check=False)


# ---------------------------------------------------------------------------------------
# Mounts and cgroups
# ---------------------------------------------------------------------------------------
def _mounts_under(prefixes: list[str]) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if any(mount_point == p or mount_point.startswith(p.rstrip("/") + "/") for p in prefixes):
            out.append(mount_point)
    return out


def unmount_all(prefixes: list[str]) -> list[str]:
    """Unmount everything below the given directories, deepest first; return what stayed."""
    for _ in range(3):
        mounts = _mounts_under(prefixes)
        if not mounts:
            return []
        for m in sorted(set(mounts), key=lambda p: p.count("/"), reverse=True):
            if _run(["umount", m], check=False).returncode:
                _run(["umount", "-l", m], check=False)
    return _mounts_under(prefixes)


def remove_cgroups(relative: str) -> list[str]:
    """rmdir a cgroup subtree (depth first) in every v1 controller; return what stayed."""
    left = []
    for controller in _cgroup_controller_dirs():
        top = controller / relative.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            try:
                d.rmdir()
            except OSError:
                pass
        if top.exists():
            left.append(str(top))
    return left


def _make_cgroup_root(relative: str) -> None:
    """Create the pods' cgroup root in every controller; a new cpuset starts with no CPUs and
    no memory nodes, so it inherits its parent's."""
    for controller in _cgroup_controller_dirs():
        path = controller
        for part in Path(relative.lstrip("/")).parts:
            parent, path = path, path / part
            path.mkdir(exist_ok=True)
            if controller.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not (path / f).read_text().strip():
                        (path / f).write_text((parent / f).read_text())


# ---------------------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------------------
class Node:
    """containerd + kubelet + kube-proxy on the bridge the control plane created, and CoreDNS.

    The control plane calls `start()` once its API server and controller manager are up.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        server: str,
        ca_file: Path,
        kubelet_token: str,
        proxy_token: str,
        kubelet_client_ca: Path,
        admin_kubeconfig: Path,
        die_with_parent: bool = True,
    ) -> None:
        self.workdir = workdir
        self.server = server
        self.ca_file = ca_file
        self.kubelet_token = kubelet_token
        self.proxy_token = proxy_token
        self.kubelet_client_ca = kubelet_client_ca
        self.admin_kubeconfig = admin_kubeconfig
        self.die_with_parent = die_with_parent
        self.cgroup_root = memory_cgroup().rstrip("/") + "/scalable-node"
        self.procs: list[Proc] = []
        self.images: dict = {}
        self.startup_seconds: float | None = None

    # -- paths ------------------------------------------------------------------------
    @property
    def containerd_socket(self) -> Path:
        return RUN_DIR / "containerd.sock"  # what _ctr talks to

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _ctr(*args, check=check)

    # -- lifecycle --------------------------------------------------------------------
    def start(self, deadline: float) -> "Node":
        from tests.support.controlplane import write_kubeconfig
        from tests.support.images import node_images

        t0 = time.monotonic()
        require_node_tools()
        bins = {name: binary(name) for name in ("kubelet", "kube-proxy")}
        # Every archive there is imported; tests that run the operator or Dask images check
        # they are current (the `node_images` fixture).
        self.images = node_images(check_inputs=False)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        _make_cgroup_root(self.cgroup_root)

        self._start_containerd(deadline)
        self._import_images()

        kubelet_kubeconfig = write_kubeconfig(
            self.workdir / "kubelet.kubeconfig", self.server, self.kubelet_token,
            ca_file=self.ca_file, user=f"system:node:{NODE_NAME}",
        )
        proxy_kubeconfig = write_kubeconfig(
            self.workdir / "kube-proxy.kubeconfig", self.server, self.proxy_token,
            ca_file=self.ca_file, user="system:kube-proxy",
        )
        kubelet_port, kubelet_healthz, proxy_healthz, proxy_metrics = free_ports(4)
        self._spawn("kubelet", [
            str(bins["kubelet"]),
            f"--config={self._kubelet_config(kubelet_port, kubelet_healthz)}",
            f"--kubeconfig={kubelet_kubeconfig}",
            f"--root-dir={self.workdir / 'kubelet'}",
            f"--cert-dir={self.workdir / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--node-labels=scalable.test/node=real",
            "--v=1",
        ])
        self._spawn("kube-proxy", [
            str(bins["kube-proxy"]),
            f"--config={self._proxy_config(proxy_kubeconfig, proxy_healthz, proxy_metrics)}",
            "--v=1",
        ])
        self._wait_node_ready(deadline)
        self._start_coredns(deadline)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.log_path(name)
        popen = spawn(argv, log, die_with_parent=self.die_with_parent)
        self.procs.append(Proc(name, popen.pid, str(log), popen, argv))

    def restart(self, name: str, *, down_seconds: float = 0.0) -> None:
        """Stop one component (kubelet, kube-proxy or containerd) and start it again with the
        same arguments, as a node's service manager would after a crash or an upgrade.
        Containers keep running: their shims outlive containerd and the kubelet."""
        (proc,) = [p for p in self.procs if p.name == name]
        terminate(proc.pid, timeout=10.0, proc=proc.popen)
        self.procs.remove(proc)
        time.sleep(down_seconds)
        self._spawn(name, proc.argv)

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.popen is not None and p.popen.poll() is not None:
                raise NodeError(f"{p.name} exited with code {p.popen.returncode}")

    # -- containerd -------------------------------------------------------------------
    def _containerd_config(self) -> Path:
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-scalable.conflist").write_text(json.dumps(self._cni_config(), indent=2) + "\n")
        root = self.containerd_root
        config = f"""\
version = 2
root = "{root}"
state = "{RUN_DIR / 'containerd-state'}"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{RUN_DIR / 'containerd.sock.ttrpc'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.images['pause'].ref}"
  # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which a container (the
  # machine this runs on may be one) often lacks: clamp the CRI's negative values (pause
  # -998, Guaranteed pods -997) to containerd's own instead of failing every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""
        path = self.workdir / "containerd.toml"
        path.write_text(config)
        return path

    @property
    def containerd_root(self) -> Path:
        """Kept between runs (beside the other cached binaries), so imported images stay
        imported; containers are removed at every stop."""
        return containerd_root()

    def _cni_config(self) -> dict:
        return {
            "cniVersion": "1.0.0",
            "name": "scalable",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "rangeStart": POD_RANGE_START, "gateway": NODE_IP}]],
                        "routes": [{"dst": ADDRESS_SPACE, "gw": NODE_IP}],
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                    },
                }
            ],
        }

    def _start_containerd(self, deadline: float) -> None:
        self._spawn("containerd", ["containerd", "--config", str(self._containerd_config()), "--log-level", "warn"])
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            r = self.ctr("version", check=False)
            if r.returncode == 0:
                return
            last = r.stderr.strip()
            time.sleep(0.2)
        raise NodeError(f"containerd did not answer on {self.containerd_socket} in time: {last}")

    def _import_images(self) -> None:
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        for image in self.images.values():
            if image.ref in present:
                continue
            r = self.ctr("images", "import", "--no-unpack", str(image.archive), check=False)
            if r.returncode:
                raise NodeError(f"ctr images import {image.archive} failed: {r.stderr.strip()}")
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        missing = [i.ref for i in self.images.values() if i.ref not in present]
        if missing:
            raise NodeError(f"images not in containerd after import: {missing}")

    # -- kubelet and kube-proxy -------------------------------------------------------
    def _kubelet_config(self, port: int, healthz_port: int) -> Path:
        resolv = self.workdir / "resolv.conf"
        # Pods get only cluster DNS: no nameserver of this machine's reaches them.
        resolv.write_text("")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.kubelet_client_ca)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "cgroupRoot": self.cgroup_root,
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDNS": [CLUSTER_DNS_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "podLogsDir": str(self.workdir / "pod-logs"),
            "enforceNodeAllocatable": ["pods"],
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
                "nodefs.inodesFree": "2%",
            },
            # The images were imported, not pulled: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "maxPods": 110,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "5s",
            "volumeStatsAggPeriod": "0s",
            "shutdownGracePeriod": "0s",
        }
        path = self.workdir / "kubelet-config.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    def _proxy_config(self, kubeconfig: Path, healthz_port: int, metrics_port: int) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{metrics_port}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "oomScoreAdj": 0,
            # Leave the kernel's conntrack settings alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"masqueradeAll": False, "localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        }
        path = self.workdir / "kube-proxy-config.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    def _kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return _run(["kubectl", f"--kubeconfig={self.admin_kubeconfig}", *args], input=input, check=check)

    def _wait_node_ready(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            r = self._kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if r.returncode == 0:
                conds = {c["type"]: c for c in json.loads(r.stdout)["status"].get("conditions", [])}
                ready = conds.get("Ready", {})
                if ready.get("status") == "True":
                    return
                last = f"Ready={ready.get('status')}: {ready.get('message')}"
            else:
                last = r.stderr.strip()
            time.sleep(0.5)
        raise NodeError(f"node {NODE_NAME} not Ready in time ({last})")

    # -- CoreDNS ----------------------------------------------------------------------
    def _start_coredns(self, deadline: float) -> None:
        self._kubectl("apply", "-f", "-", input=coredns_manifests(self.images["coredns"].ref))
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            r = self._kubectl(
                "-n", "kube-system", "get", "deployment", "coredns",
                "-o", "jsonpath={.status.readyReplicas}", check=False,
            )
            if r.returncode == 0 and r.stdout.strip() == "1":
                return
            last = r.stdout.strip() or r.stderr.strip()
            time.sleep(0.5)
        pods = self._kubectl("-n", "kube-system", "get", "pods", "-o", "wide", check=False).stdout
        raise NodeError(f"CoreDNS not ready in time (readyReplicas={last!r})\n{pods}")

    # -- stop -------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Stop the kubelet, every container, kube-proxy and containerd; unmount and remove
        what they made. Returns what could not be removed (empty when clean)."""
        popens = {p.pid: p.popen for p in self.procs}
        problems = shutdown(self.state(), popens)
        self.procs.clear()
        return problems

    def state(self) -> dict:
        return {
            "workdir": str(self.workdir),
            "cgroup_root": self.cgroup_root,
            "procs": [{"name": p.name, "pid": p.pid, "log": p.log} for p in self.procs],
        }

    def logs(self, lines: int = 40) -> str:
        return self.logs_in(self.workdir, lines)

    @staticmethod
    def logs_in(workdir: Path, lines: int = 40) -> str:
        """The last lines of each node component's log under workdir, headed by its name."""
        out = []
        for name in NODE_COMPONENTS:
            path = workdir / "logs" / f"{name}.log"
            if path.exists():
                out.append(f"----- last {lines} lines of {name} ({path}) -----\n{tail(path, lines)}")
        return "\n".join(out)


def containerd_root() -> Path:
    from tests.support.testenv import testenv_dir

    return testenv_dir() / "node" / "containerd"


def _shim_pids() -> list[int]:
    """containerd-shim-runc-v2 processes started for our containerd (their command line names
    our socket)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "containerd-shim" in cmd and str(RUN_DIR) in cmd:
            pids.append(int(proc.name))
    return pids


def _ctr(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`ctr` against the node's containerd, in the Kubernetes namespace."""
    return _run(["ctr", "--address", str(RUN_DIR / "containerd.sock"), "--namespace", "k8s.io", *args], check=check)


def _remove_containers() -> None:
    """Kill every task and delete every container, so no shim or container outlives the node."""
    for cid in _ctr("containers", "ls", "-q").stdout.split():
        _ctr("tasks", "kill", "--signal", "SIGKILL", cid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any("RUNNING" in t for t in _ctr("tasks", "ls").stdout.splitlines()[1:]):
            break
        time.sleep(0.2)
    for cid in _ctr("containers", "ls", "-q").stdout.split():
        _ctr("tasks", "delete", "--force", cid)
        _ctr("containers", "rm", cid)


def _alive(pid: int, needle: str) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def shutdown(state: dict, popens: dict[int, subprocess.Popen | None] | None = None) -> list[str]:
    """Stop a node from its recorded state (its own process or `make testenv-down` after a
    crash): kubelet and kube-proxy first, then every container, then containerd; then
    `cleanup`. Returns what stayed."""
    popens = popens or {}
    procs = {p["name"]: p for p in state.get("procs", [])}
    needle = state.get("workdir", "")

    def running(name: str) -> bool:
        return name in procs and (popens.get(procs[name]["pid"]) is not None or _alive(procs[name]["pid"], needle))

    for name in ("kubelet", "kube-proxy"):
        if running(name):
            terminate(procs[name]["pid"], timeout=10.0, proc=popens.get(procs[name]["pid"]))
    if running("containerd"):
        _remove_containers()
        terminate(procs["containerd"]["pid"], timeout=10.0, proc=popens.get(procs["containerd"]["pid"]))
    return cleanup(state)


# containerd 1.6's CRI keeps pod network namespaces here (named cni-<uuid>); its sandboxes are
# removed with ctr at stop, not through the CRI, so their namespaces are unmounted by cleanup.
NETNS_DIR = Path("/run/netns")


def _remove_pod_netns() -> list[str]:
    left = []
    for path in sorted(NETNS_DIR.glob("cni-*")) if NETNS_DIR.is_dir() else []:
        if _run(["umount", str(path)], check=False).returncode and path.is_mount():
            _run(["umount", "-l", str(path)], check=False)
        try:
            path.unlink()
        except OSError:
            left.append(f"network namespace left: {path}")
    return left


def cleanup(state: dict) -> list[str]:
    """Remove what a node left: shims, mounts, pod network namespaces, cgroups (its processes
    are already stopped). Idempotent; safe after a crash. Returns what stayed."""
    for pid in _shim_pids():
        terminate(pid, timeout=5.0)
    workdir = state.get("workdir")
    prefixes = [str(RUN_DIR), str(containerd_root())] + ([workdir] if workdir else [])
    problems = [f"still mounted: {m}" for m in unmount_all(prefixes)]
    problems += _remove_pod_netns()
    if state.get("cgroup_root"):
        problems += [f"cgroup left: {c}" for c in remove_cgroups(state["cgroup_root"])]
    if not problems:
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    return problems


def coredns_manifests(image: str) -> str:
    """CoreDNS in kube-system the way clusters run it: a Deployment behind the kube-dns Service
    at the kubelet's clusterDNS address, answering only for cluster.local (no upstream).
    Non-root, so it listens on 1053 and the Service maps port 53 to it."""
    corefile = (
        ".:1053 {\n"
        "    errors\n"
        "    health :8080\n"
        "    ready :8181\n"
        f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "    }\n"
        "    cache 5\n"
        "    loop\n"
        "    reload\n"
        "}\n"
    )
    docs = [
        {
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "scalable:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "scalable:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "scalable:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": corefile},
        },
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                "template": {
                    "metadata": {"labels": {"k8s-app": "kube-dns"}},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
                        "containers": [{
                            "name": "coredns",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                {"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 1053, "protocol": "TCP"},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 1},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": CLUSTER_DNS_IP,
                "selector": {"k8s-app": "kube-dns"},
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                ],
            },
        },
    ]
    return "\n".join(json.dumps(d) for d in docs)


def kubelet_client_certificates(pki: Path) -> tuple[Path, Path, Path]:
    """A CA the kubelet trusts for client certificates, and the API server's client
    certificate signed by it (group system:masters), for logs, exec and port-forward.
    Returns (ca.crt, client.crt, client.key)."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = pki / "kubelet-client-ca.key", pki / "kubelet-client-ca.crt"
    key, csr, crt = pki / "apiserver-kubelet-client.key", pki / "apiserver-kubelet-client.csr", pki / "apiserver-kubelet-client.crt"
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
          "-days", "7", "-subj", "/CN=scalable-testenv-kubelet-client-ca"])
    _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
          "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client"])
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
          "-CAcreateserial", "-out", str(crt), "-days", "7"])
    return ca_crt, crt, key


def node_tokens() -> tuple[str, str]:
    """Static bearer tokens for the kubelet and kube-proxy (written into the API server's
    token file next to the admin's)."""
    return secrets.token_hex(16), secrets.token_hex(16)
