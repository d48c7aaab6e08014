"""A real Dask scheduler and workers as local processes, each with /metrics on its HTTP port.

    cluster = DaskProcesses(n_workers=2).start()
    cluster.scheduler_address        # tcp://127.0.0.1:<port>   (for distributed.Client)
    cluster.scheduler_metrics        # 127.0.0.1:<port>         (Prometheus target, path /metrics)
    cluster.worker_metrics           # ['127.0.0.1:<port>', ...]
    cluster.add_worker(); cluster.stop_worker(name)
    cluster.stop()

The scheduler's HTTP server serves `/metrics` (prometheus_client is installed) and the
`distributed.http.scheduler.api` routes (graceful retirement over HTTP).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.testenv import REPO_ROOT, free_ports, spawn, tail, terminate

SCHEDULER_ROUTES = [
    "distributed.http.scheduler.prometheus",
    "distributed.http.scheduler.info",
    "distributed.http.scheduler.json",
    "distributed.http.health",
    "distributed.http.proxy",
    "distributed.http.statics",
    "distributed.http.scheduler.api",
]


class DaskProcessError(RuntimeError):
    pass


@dataclass
class _Worker:
    name: str
    http_port: int
    proc: subprocess.Popen
    log: Path


class DaskProcesses:
    def __init__(
        self,
        n_workers: int = 1,
        *,
        nthreads: int = 1,
        memory_limit: str = "1GiB",
        workdir: Path | str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.n_workers = n_workers
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="scalable-dask-"))
        self.extra_env = env or {}
        self.port = 0
        self.http_port = 0
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, _Worker] = {}
        self._counter = 0

    @property
    def scheduler_address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def scheduler_metrics(self) -> str:
        """host:port of the scheduler's HTTP server (Prometheus target; path /metrics)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def worker_metrics(self) -> list[str]:
        return [f"127.0.0.1:{w.http_port}" for w in self.workers.values()]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Route list as distributed's config reads it from the environment (a YAML list).
        env["DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"] = json.dumps(SCHEDULER_ROUTES)
        env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
        # Workers import task functions by reference: make tests.support.workloads importable.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> "DaskProcesses":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port = free_ports(2)
        self.scheduler = spawn(
            [
                sys.executable, "-m", "distributed.cli.dask_scheduler",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--dashboard-address", f"127.0.0.1:{self.http_port}",
                "--no-show",
            ],
            self.workdir / "scheduler.log",
            env=self._env(),
        )
        try:
            self._wait_http(self.dashboard_url + "/health", self.scheduler, "scheduler", timeout)
            for _ in range(self.n_workers):
                self.add_worker(wait=False)
            self.wait_for_workers(self.n_workers, timeout)
        except BaseException:
            logs = self.logs()
            self.stop()
            raise DaskProcessError(f"the local Dask cluster did not start:\n{logs}") from None
        return self

    def add_worker(self, name: str | None = None, *, wait: bool = True, timeout: float = 30.0) -> str:
        name = name or f"worker-{self._counter}"
        self._counter += 1
        (http_port,) = free_ports(1)
        log = self.workdir / f"{name}.log"
        proc = spawn(
            [
                sys.executable, "-m", "distributed.cli.dask_worker",
                self.scheduler_address,
                "--name", name,
                "--host", "127.0.0.1",
                "--nthreads", str(self.nthreads),
                "--nworkers", "1",
                "--memory-limit", self.memory_limit,
                "--dashboard-address", f"127.0.0.1:{http_port}",
                "--local-directory", str(self.workdir / name),
                "--no-nanny",
            ],
            log,
            env=self._env(),
        )
        self.workers[name] = _Worker(name, http_port, proc, log)
        if wait:
            self.wait_for_workers(len(self.workers), timeout)
        return name

    def stop_worker(self, name: str) -> None:
        w = self.workers.pop(name)
        terminate(w.proc.pid, timeout=10.0, proc=w.proc)

    def n_connected(self) -> int:
        with urllib.request.urlopen(self.dashboard_url + "/json/counts.json", timeout=5) as r:
            return int(json.load(r)["workers"])

    def wait_for_workers(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self.n_connected() >= n:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise DaskProcessError(f"{n} workers did not connect in {timeout} s:\n{self.logs()}")

    def _check_alive(self) -> None:
        if self.scheduler is not None and self.scheduler.poll() is not None:
            raise DaskProcessError(f"dask scheduler exited with code {self.scheduler.returncode}")
        for w in self.workers.values():
            if w.proc.poll() is not None:
                raise DaskProcessError(f"dask worker {w.name} exited with code {w.proc.returncode}")

    def _wait_http(self, url: str, proc: subprocess.Popen, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DaskProcessError(f"dask {what} exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise DaskProcessError(f"dask {what} not answering {url} after {timeout} s")

    def logs(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            out.append(f"----- last {lines} lines of {path.name} -----\n{tail(path, lines)}")
        return "\n".join(out)

    def stop(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)
        if self.scheduler is not None:
            terminate(self.scheduler.pid, timeout=10.0, proc=self.scheduler)
            self.scheduler = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "DaskProcesses":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
