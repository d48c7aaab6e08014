"""A real Prometheus server (Debian's `prometheus`) on loopback for tests.

    prom = PrometheusServer(scrape_interval="1s").start()
    prom.add_target("dask-scheduler", "127.0.0.1:8787")     # rewrites the config, reloads
    prom.wait_for('dask_scheduler_workers{state="idle"}', lambda v: v >= 2)
    prom.query("sum(dask_scheduler_tasks)")                   # instant-query result list
    prom.url                                                  # http://127.0.0.1:<port>
    prom.discover_pods(api_server, token_file, ca_file)       # kubernetes_sd_configs, role pod
    prom.stop()

`discover_pods` (call it before `start()`) is how clusters really find Dask schedulers and workers: Prometheus lists and
watches pods through the API server and scrapes those annotated `prometheus.io/scrape: "true"`
on `prometheus.io/port` and `prometheus.io/path`, with the prometheus-community chart's
relabelling: `namespace`, `pod`, and every pod label through `labelmap` (so the pod label
`dask.org/cluster-name` becomes `dask_org_cluster_name`, as dask-kubernetes' ServiceMonitor
and PodMonitor also name it): the labels the operator's default PromQL selects on and
demands of every query (`scalable.controller.scrape_labels`).

`add_target(job, address, labels=...)` gives a static target the labels such a scrape would
attach (`scrape_labels.scope_labels(namespace, cluster)`).

Storage is a temporary directory, removed by stop().
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import yaml

from tests.support.testenv import binary, free_port, prometheus_binary, spawn, tail, terminate


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(
        self,
        targets: dict[str, list[str]] | None = None,
        *,
        scrape_interval: str = "1s",
        workdir: Path | str | None = None,
    ) -> None:
        self.targets: dict[str, list[str]] = {job: list(t) for job, t in (targets or {}).items()}
        self.target_labels: dict[str, dict[str, str]] = {}
        self.honor_labels: set[str] = set()
        self.scrape_interval = scrape_interval
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="scalable-prometheus-"))
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.kubernetes_sd: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {"job_name": job, **({"honor_labels": True} if job in self.honor_labels else {}),
                 "static_configs": [{"targets": targets, **({"labels": self.target_labels[job]}
                                                            if self.target_labels.get(job) else {})}]}
                for job, targets in sorted(self.targets.items())
            ] + self.kubernetes_sd,
        }

    def discover_pods(self, api_server: str, token_file: Path, ca_file: Path, *, job: str = "kubernetes-pods",
                      namespaces: list[str] | None = None) -> None:
        """Scrape annotated pods found through the API server (kubernetes_sd_configs, role
        pod), with the relabelling clusters use. Call before `start()`: only the upstream
        build has Kubernetes discovery, so the server's binary depends on it."""
        if self.proc is not None and not self.kubernetes_sd:
            raise PrometheusError("discover_pods() must come before start(): Debian's prometheus has no kubernetes_sd_configs")
        sd: dict = {
            "role": "pod",
            "api_server": api_server,
            "authorization": {"credentials_file": str(token_file)},
            "tls_config": {"ca_file": str(ca_file)},
        }
        if namespaces:
            sd["namespaces"] = {"names": namespaces}
        annotation = "__meta_kubernetes_pod_annotation_prometheus_io_"
        self.kubernetes_sd = [c for c in self.kubernetes_sd if c["job_name"] != job] + [{
            "job_name": job,
            "kubernetes_sd_configs": [sd],
            "relabel_configs": [
                {"source_labels": [annotation + "scrape"], "regex": "true", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
                {"source_labels": [annotation + "path"], "regex": "(.+)", "target_label": "__metrics_path__"},
                {"source_labels": ["__meta_kubernetes_pod_ip", annotation + "port"], "regex": "(.+);(.+)",
                 "replacement": "$1:$2", "target_label": "__address__"},
                {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }]
        self.reload()

    def _write_config(self) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        tmp.replace(self.config_path)

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        # Debian's build has no Kubernetes service discovery; `make testenv` builds upstream's
        # with it. MissingBinaryError names the install script or the make target.
        exe = binary("prometheus-kubernetes-sd") if self.kubernetes_sd else prometheus_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.port = free_port()
        self.proc = spawn(
            [
                str(exe),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            self.log_path,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, log = self.proc.returncode, tail(self.log_path)
                self.stop()
                raise PrometheusError(f"prometheus exited with code {code}:\n{log}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        log = tail(self.log_path)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout} s:\n{log}")

    def add_target(self, job: str, *targets: str, labels: dict[str, str] | None = None, honor_labels: bool = False) -> None:
        """Scrape host:port targets (path /metrics) under a job name, their series labelled
        with ``labels`` (the job's, for all its targets), or with the exporter's own where
        ``honor_labels``; reloads the server."""
        if labels is not None:
            self.target_labels[job] = dict(labels)
        if honor_labels:
            self.honor_labels.add(job)
        self.targets.setdefault(job, [])
        self.targets[job].extend(t for t in targets if t not in self.targets[job])
        self.reload()

    def remove_target(self, job: str, target: str | None = None) -> None:
        if target is None:
            self.targets.pop(job, None)
        elif target in self.targets.get(job, []):
            self.targets[job].remove(target)
        self.reload()

    def reload(self) -> None:
        self._write_config()
        if self.proc is None:
            return
        req = urllib.request.Request(self.url + "/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 200:
                raise PrometheusError(f"reload failed: HTTP {r.status}")

    def api(self, path: str, **params: str) -> dict:
        """GET /api/v1/<path>; returns `data`, raising on status != success."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        """Instant query; the `result` list ([{'metric': {...}, 'value': [ts, '1']}, ...])."""
        return self.api("query", query=promql)["result"]

    def value(self, promql: str) -> float | None:
        """The value of a query that yields one sample (None when it yields none)."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} series; aggregate it")
        return float(result[0]["value"][1])

    def active_targets(self) -> list[dict]:
        return self.api("targets")["activeTargets"]

    def wait_for(
        self, promql: str, predicate: Callable[[float], bool] = lambda v: True, timeout: float = 30.0
    ) -> float:
        """Poll until the single-sample query exists and predicate(value) holds; return it."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.value(promql)
            if last is not None and predicate(last):
                return last
            time.sleep(0.25)
        targets = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in self.active_targets()]
        raise PrometheusError(f"{promql!r} did not satisfy the condition in {timeout} s (last value {last}); targets: {targets}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc.pid, timeout=10.0, proc=self.proc)
            self.proc = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
