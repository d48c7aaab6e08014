"""Fault injection for the local control plane (kept apart from controlplane.py on purpose).

- `restart_apiserver(cp, down_seconds)`: SIGKILL kube-apiserver and start it again with the very
  same command line (same port, certificates, etcd), then wait until /readyz answers. etcd and
  the controller manager keep running, so this is an API server crash and restart mid-reconcile.
- `pause_etcd(cp, seconds)`: etcd stops answering for a while (SIGSTOP / SIGCONT).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.support.controlplane import ControlPlane
from tests.support.testenv import Proc, spawn


def restart_apiserver(cp: ControlPlane, down_seconds: float = 2.0, timeout: float = 60.0) -> float:
    """Kill and restart the API server; returns the seconds it was unavailable."""
    (old,) = [p for p in cp.procs if p.name == "kube-apiserver"]
    argv = Path(f"/proc/{old.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    argv = [a.decode() for a in argv]
    t0 = time.monotonic()
    os.killpg(old.pid, signal.SIGKILL)
    if old.popen is not None:
        old.popen.wait(timeout=10)
    time.sleep(down_seconds)
    popen = spawn(argv, Path(old.log), die_with_parent=cp.die_with_parent)
    cp.procs[cp.procs.index(old)] = Proc(old.name, popen.pid, old.log, popen, argv)
    cp._wait_ready(time.monotonic() + timeout)
    return time.monotonic() - t0


def pause_etcd(cp: ControlPlane, seconds: float = 5.0) -> None:
    """etcd briefly unavailable: SIGSTOP it for ``seconds``, then SIGCONT (the API server stays up
    and answers 5xx/timeouts for writes and uncached reads meanwhile)."""
    (etcd,) = [p for p in cp.procs if p.name == "etcd"]
    os.kill(etcd.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(etcd.pid, signal.SIGCONT)
