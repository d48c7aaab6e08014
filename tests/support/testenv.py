"""Where the pinned test-environment binaries live, and shared process helpers.

The versions come from ``hack/versions.env`` (the single place they are pinned); the
binaries are built by ``make testenv`` (``hack/testenv-build.sh``) into
``$SCALABLE_TESTENV_DIR`` (default ``~/.cache/scalable-testenv``), one directory per
component and version.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.env"

BUILD_HINT = "run `make testenv` (hack/testenv-build.sh) to build the pinned control-plane binaries"
PROMETHEUS_HINT = (
    "run `hack/install-system-deps.sh` (installs Debian's `prometheus` package; CI does this in .ci/run)"
)


class MissingBinaryError(RuntimeError):
    """A binary the test environment needs is not there; the message says how to get it."""


def versions() -> dict[str, str]:
    """The KEY=value pairs of hack/versions.env."""
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def testenv_dir() -> Path:
    return Path(os.environ.get("SCALABLE_TESTENV_DIR") or Path.home() / ".cache" / "scalable-testenv")


def binary(name: str) -> Path:
    """Path of a pinned binary (kube-apiserver, kube-controller-manager, kube-scheduler, etcd,
    helm, kwok, the node's kubelet, kube-proxy and coredns, and prometheus-kubernetes-sd: the
    upstream Prometheus built with Kubernetes service discovery, which Debian's lacks).

    Raises MissingBinaryError naming `make testenv` when it has not been built.
    """
    v = versions()
    where = {
        "kube-apiserver": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "kube-controller-manager": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "kube-scheduler": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "kubelet": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "kube-proxy": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "coredns": f"coredns-{v['COREDNS_VERSION']}",
        "etcd": f"etcd-{v['ETCD_VERSION']}",
        "helm": f"helm-{v['HELM_VERSION']}",
        "kwok": f"kwok-{v['KWOK_VERSION']}",
        "prometheus-kubernetes-sd": f"prometheus-{v['PROMETHEUS_VERSION']}",
    }
    filename = {"prometheus-kubernetes-sd": "prometheus"}.get(name, name)
    if name not in where:
        raise KeyError(f"unknown testenv binary {name!r}; known: {sorted(where)}")
    path = testenv_dir() / where[name] / filename
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise MissingBinaryError(f"{name} is missing: expected {path}; {BUILD_HINT}")
    return path


def prometheus_binary() -> Path:
    """Debian's prometheus (or one on PATH); MissingBinaryError names the install script."""
    found = shutil.which("prometheus")
    if not found:
        raise MissingBinaryError(f"prometheus is not on PATH; {PROMETHEUS_HINT}")
    return Path(found)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open together while choosing them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Proc:
    """A process `spawn` started: its name, pid, log, and (when started by this process) the
    Popen and the argv, so it can be reaped or started again the same way."""

    name: str
    pid: int
    log: str
    popen: subprocess.Popen | None = field(default=None, repr=False)
    argv: list[str] = field(default_factory=list, repr=False)


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except FileNotFoundError:
        return "(no log file)\n"


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux/glibc: the parent still stops it
        pass


def spawn(
    argv: list[str], log_path: Path, *, env: dict[str, str] | None = None, die_with_parent: bool = True
) -> subprocess.Popen:
    """Start a long-running process in its own session, output to log_path.

    With die_with_parent the kernel sends it SIGTERM if the starting process dies (so a
    killed pytest leaves nothing running); `hack/testenv-up.sh` turns that off. The kernel
    ties this to the starting *thread*, so it is only set when called from the main thread
    (a process started from a worker thread must not die when that thread ends).
    """
    die_with_parent = die_with_parent and threading.current_thread() is threading.main_thread()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=_set_pdeathsig if die_with_parent else None,
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def terminate(pid: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group of pid, then SIGKILL after timeout; reap it if it is ours."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return
            if proc is None and not pid_alive(pid):
                return
            time.sleep(0.05)
    if proc is not None:
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
