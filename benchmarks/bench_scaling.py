"""Closed-loop scaling benchmark on a real LocalCluster: predictive vs reactive vs Dask's adapt().

    python benchmarks/bench_scaling.py [--quick] [--seed 0] [--trials 3]

The scaling settings are written once, as the spec of a ScalableWorkflow (``WORKFLOW``,
validated by ``ScalableWorkflowSpec``), and the scaler the session drives is the one the
operator builds from it (``controller.scaling_loop.make_scaler``), so what is measured is the
operator's scaler and configuration. The session's cluster comes from a manifest whose worker
groups and scaling section are the spec's; before anything runs, the benchmark checks that the
manifest maps onto the same ScalerConfig as the spec (``manifest.scaler_config("local") ==
spec.scaler_config()``).

A bursty workload of real tasks arrives in waves; within a wave the arrival rate rises (a
sweep driver speeding up, an ensemble whose members become ready). A task sleeps for a time
and touches an amount of memory that both grow with its input ``n_nodes``. Each trial runs one
arrival schedule three times, each on a fresh LocalCluster of single-threaded worker processes:

* ``predictive``: the spec in mode Predictive, its scaler given a LearnedAdvisor trained on a
  warm-up run of the same kind of tasks (different inputs);
* ``reactive``: the same spec in mode Reactive (``make_scaler`` then drops the advisor);
* ``dask_adapt``: the session with its scaler off and ``cluster.adapt()`` (Dask's own
  adaptive scaling, from its task-duration estimates) with the spec's bounds and poll interval.

Wait (start minus submit) comes from the session's task telemetry, queue length and worker
count from sampling the scheduler; worker-seconds integrate connected workers from the first
submission to the last finish. Sleeping tasks keep the 2 shared cores free for what is
measured: scaling, not CPU contention. Trials differ in their arrival seed, and the order of
the strategies rotates between trials (with three trials each strategy runs first, second and
last once), against drift in the machine's load. Every figure is reported per trial and as
mean ± sd and min..max across trials; ``--quick`` runs one trial of two waves. Figures go to
benchmarks/results/scaling.json and the plot to benchmarks/results/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dask
import distributed
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, table, write_result  # noqa: E402

from scalable.controller.resources import ScalableWorkflowSpec  # noqa: E402
from scalable.controller.scaling_loop import make_scaler  # noqa: E402
from scalable.session.manifest import Manifest  # noqa: E402
from scalable.session.session import ScalableSession  # noqa: E402

TAG = "demeter"
TASK = "run_scenario"
#: Worker processes fork from a server that has imported Dask already. Spawned from scratch,
#: a worker needs about 1.5 s of CPU to start; on this shared 2-core machine (load 10-16 while
#: others build and test) eight of them took 5-35 s, which measured the machine, not the policies.
WORKER_START = "forkserver"
#: a forkserver worker joins in 0.5-1 s here (see the series of earlier runs)
WORKER_STARTUP_S = 1.0
#: what a worker of the session's cluster is: the operator reads threads from the worker pod's
#: CPU, and a worker of one CPU has one thread
THREADS_PER_WORKER = 1
WORKER_MEMORY = "1Gi"

#: The ScalableWorkflow spec the benchmark measures, as a user would write it (its mode is set
#: per strategy). The horizon is left to its default, the cooldown plus a worker's start-up.
WORKFLOW: dict[str, Any] = {
    "clusterRef": {"name": "bench-scaling"},
    "workerGroups": [{"name": "default", "tag": TAG, "task": TASK, "minWorkers": 1, "maxWorkers": 8}],
    "scaling": {
        "pollIntervalSeconds": 1,
        "cooldownSeconds": 5,
        "workerStartupSeconds": WORKER_STARTUP_S,
        "scaleUpThreshold": 0.8,
        "scaleDownThreshold": 0.3,
        "minConfidence": 0.3,
        "maxScaleDownStep": 2,
    },
}
#: strategy -> the spec's scaling mode (Off: the session does not scale, adapt() does)
STRATEGIES = {"predictive": "Predictive", "reactive": "Reactive", "dask_adapt": "Off"}


def run_scenario(n_nodes: int, size_mb: int) -> int:
    """Hold ``size_mb`` of touched memory for 0.3 s plus 1 ms per node."""
    block = bytearray(size_mb * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(0.3 + n_nodes / 1000)
    return n_nodes


def task_inputs(n_nodes: int) -> dict[str, int]:
    return {"n_nodes": n_nodes, "size_mb": 16 + min(n_nodes, 8000) // 80}


#: (kind, tasks, seconds over which they arrive, range of n_nodes): a sweep of large scenarios
#: submitted within a few seconds, then many small post-processing runs over a longer stretch
WAVES = [("large", 14, 6.0, (3000, 8000)), ("small", 60, 10.0, (0, 300))]


def schedule(seed: int, waves: int, period_s: float) -> list[tuple[float, dict[str, int]]]:
    """Arrival times and inputs: waves alternate between the kinds of WAVES, one every ``period_s``.

    Within a wave the density of arrivals rises linearly over its ramp (a driver speeding up).
    """
    rng = random.Random(seed)
    out = []
    for wave in range(waves):
        _, count, ramp_s, (low, high) = WAVES[wave % len(WAVES)]
        for _ in range(count):
            out.append((wave * period_s + ramp_s * math.sqrt(rng.random()), task_inputs(rng.randint(low, high))))
    return sorted(out, key=lambda item: item[0])


def history_inputs(rng: random.Random) -> dict[str, int]:
    """Warm-up inputs cover both kinds, log-uniformly, but are never the benchmark's own."""
    return task_inputs(int(math.exp(rng.uniform(math.log(50), math.log(8000)))))


def workflow_spec(mode: str, **group_changes: Any) -> ScalableWorkflowSpec:
    """``WORKFLOW`` in scaling ``mode``, validated as the operator validates a ScalableWorkflow."""
    groups = [{**group, **group_changes} for group in WORKFLOW["workerGroups"]]
    return ScalableWorkflowSpec.model_validate({**WORKFLOW, "workerGroups": groups, "scaling": {**WORKFLOW["scaling"], "mode": mode}})


def session_manifest(spec: ScalableWorkflowSpec) -> Manifest:
    """The manifest of the session's cluster: the spec's groups as local worker processes.

    Its scaling section is the spec's in the manifest's spelling, so that the check that both
    map onto one ScalerConfig covers every setting; the session takes only the poll interval
    from it, and the scaler from :func:`make_scaler`.
    """
    s = spec.scaling
    return Manifest.model_validate({
        "workflow": f"bench-scaling-{s.mode.lower()}",
        "target": "local",
        "worker_groups": [
            {"tag": g.tag or g.name, "workers": {"min": g.minWorkers, "max": g.maxWorkers}, "threads": THREADS_PER_WORKER, "memory": WORKER_MEMORY}
            for g in spec.workerGroups
        ],
        "scaling": {
            "mode": s.mode.lower(), "advisor": "none", "poll_interval_seconds": float(s.pollIntervalSeconds),
            "scale_up_threshold": s.scaleUpThreshold, "scale_down_threshold": s.scaleDownThreshold,
            "target_utilisation": s.targetUtilisation, "cooldown_seconds": float(s.cooldownSeconds),
            "worker_startup_seconds": s.workerStartupSeconds, "horizon_seconds": s.horizonSeconds,
            "min_confidence": s.minConfidence, "max_scale_up_step": s.maxScaleUpStep, "max_scale_down_step": s.maxScaleDownStep,
        },
    })


def configurations() -> dict[str, tuple[ScalableWorkflowSpec, Manifest]]:
    """Spec and session manifest per strategy, checked to be one scaler configuration."""
    out = {}
    for name, mode in STRATEGIES.items():
        spec = workflow_spec(mode)
        manifest = session_manifest(spec)
        assert manifest.scaler_config("local") == spec.scaler_config(), (
            f"{name}: the session's manifest and the ScalableWorkflow map onto different scaler configurations:\n"
            f"  manifest: {manifest.scaler_config('local')}\n  spec:     {spec.scaler_config()}"
        )
        out[name] = (spec, manifest)
    return out


def cluster_state(dask_scheduler: Any) -> dict[str, int]:
    """Run on the scheduler: tasks waiting for a thread, tasks running, connected workers."""
    waiting = running = 0
    for ws in dask_scheduler.workers.values():
        assigned = len(ws.processing)
        running += min(assigned, ws.nthreads)
        waiting += max(0, assigned - ws.nthreads)
    waiting += len(dask_scheduler.queued) + len(dask_scheduler.unrunnable)
    return {"waiting": waiting, "running": running, "workers": len(dask_scheduler.workers)}


class Sampler(threading.Thread):
    """Samples the scheduler every ``interval`` seconds until stopped."""

    def __init__(self, client: Any, t0: float, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.client, self.t0, self.interval = client, t0, interval
        self.samples: list[tuple[float, int, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                state = self.client.run_on_scheduler(cluster_state)
            except Exception:  # noqa: BLE001 - the cluster is closing
                break
            self.samples.append((time.time() - self.t0, state["waiting"], state["running"], state["workers"]))
            self.stop.wait(self.interval)


def warm_up(runs_dir: Path, seed: int, tasks: int) -> None:
    """History for the LearnedAdvisor: the same task with other inputs, on a fixed cluster."""
    rng = random.Random(seed + 1000)
    group = WORKFLOW["workerGroups"][0]
    fixed = workflow_spec("Off", minWorkers=group["maxWorkers"], maxWorkers=group["maxWorkers"])
    session = ScalableSession(session_manifest(fixed), runs_dir=runs_dir, advisor=None)
    client = session.start()
    try:
        futures = [client.submit(run_scenario, tag=TAG, **history_inputs(rng)) for _ in range(tasks)]
        client.gather(futures)
    finally:
        session.close()


def run_strategy(name: str, spec: ScalableWorkflowSpec, manifest: Manifest, arrivals: list[tuple[float, dict[str, int]]],
                 runs_dir: Path, advisor: Any) -> dict[str, Any]:
    """One strategy on one arrival schedule, on a fresh LocalCluster; its figures and time series."""
    scaler = make_scaler(spec, advisor) if spec.scaling.mode != "Off" else None
    session = ScalableSession(manifest, runs_dir=runs_dir, scaler=scaler)
    load_before = os.getloadavg()[0]
    client = session.start()
    cluster = session._target.cluster
    tag = TAG
    group = spec.workerGroups[0]
    if scaler is None:
        cluster.new_spec["options"].update(nthreads=THREADS_PER_WORKER, memory_limit=manifest.group(TAG).memory)
        cluster.adapt(minimum=group.minWorkers, maximum=group.maxWorkers, interval=f"{spec.scaling.pollIntervalSeconds}s")
        tag = None
    deadline = time.time() + 60
    while len(client.scheduler_info()["workers"]) < group.minWorkers and time.time() < deadline:
        time.sleep(0.1)
    t0 = time.time() + 0.5
    sampler = Sampler(client.dask, t0)
    sampler.start()
    futures = []
    for at, inputs in arrivals:
        delay = t0 + at - time.time()
        if delay > 0:
            time.sleep(delay)
        futures.append(client.submit(run_scenario, tag=tag, pure=False, **inputs))
    client.gather(futures)
    time.sleep(0.5)
    sampler.stop.set()
    sampler.join()
    decisions = list(session.decisions)
    session.close()

    run_dir = session.runs_dir / session.run_id
    tasks = [json.loads(line) for line in (run_dir / "tasks.jsonl").read_text().splitlines()]
    assert len(tasks) == len(arrivals), f"{name}: {len(tasks)} task records for {len(arrivals)} tasks"
    waits = np.array([t["started_at"] - t["submitted_at"] for t in tasks])
    first = min(t["submitted_at"] for t in tasks) - t0
    last = max(t["finished_at"] for t in tasks) - t0
    samples = np.array(sampler.samples)
    inside = samples[(samples[:, 0] >= first) & (samples[:, 0] <= last)]
    worker_seconds = float(np.trapezoid(inside[:, 3], inside[:, 0])) if len(inside) > 1 else float("nan")
    modes: dict[str, int] = {}
    changes = []
    for decision in decisions:
        for d in decision.tags.values():
            if d.action != "hold":
                modes[f"{d.action}/{d.mode}"] = modes.get(f"{d.action}/{d.mode}", 0) + 1
                changes.append([round(decision.time - t0, 2), d.from_workers, d.to_workers, d.mode, d.reason])
    return {
        "tasks": len(tasks),
        "mean_wait_s": float(waits.mean()),
        "p50_wait_s": float(np.percentile(waits, 50)),
        "p95_wait_s": float(np.percentile(waits, 95)),
        "makespan_s": last - first,
        "worker_seconds": worker_seconds,
        "peak_workers": int(samples[:, 3].max()),
        "load_avg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "decisions": modes,
        "changes": changes,
        "waits": [round(float(w), 3) for w in waits],
        "series": {
            "t": [round(x, 2) for x in samples[:, 0]],
            "waiting": [int(x) for x in samples[:, 1]],
            "running": [int(x) for x in samples[:, 2]],
            "workers": [int(x) for x in samples[:, 3]],
        },
    }


#: (key, heading, format): the figures reported per trial and with their spread
FIGURES = [
    ("mean_wait_s", "mean wait s", "{:.2f}"),
    ("p50_wait_s", "p50 wait s", "{:.2f}"),
    ("p95_wait_s", "p95 wait s", "{:.2f}"),
    ("makespan_s", "makespan s", "{:.1f}"),
    ("worker_seconds", "worker-seconds", "{:.0f}"),
    ("peak_workers", "peak workers", "{:.0f}"),
]


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one trial), min and max across trials."""
    array = np.array(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if array.size > 1 else None,
        "min": float(array.min()),
        "max": float(array.max()),
        "per_trial": [float(v) for v in array],
    }


def shown(figure: dict[str, Any], fmt: str) -> str:
    """``mean ± sd (trial 1 / trial 2 / ...)``, or the one value of a single trial."""
    values = " / ".join(fmt.format(v) for v in figure["per_trial"])
    if figure["sd"] is None:
        return values
    return f"{fmt.format(figure['mean'])} ± {fmt.format(figure['sd'])} ({values})"


def environment() -> dict[str, Any]:
    """What runs, beyond the machine that ``write_result`` records: libraries, interpreter, code.

    Other engineers edit this tree while benchmarks run, so the files that differ from the
    commit at the start are listed: the figures belong to that commit only when the list is empty.
    """
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT.parent, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "python_executable": sys.executable,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "worker_start_method": WORKER_START,
        "commit": git("rev-parse", "HEAD").strip(),
        "uncommitted_files": [line[3:] for line in git("status", "--porcelain", "--", "operator", "benchmarks").splitlines()],
    }


def plot(results: dict[str, dict[str, Any]], arrivals: list[tuple[float, dict[str, int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10, 9.5))
    grid = fig.add_gridspec(3, 1, height_ratios=[1, 1, 1.1])
    queue_ax = fig.add_subplot(grid[0])
    workers_ax = fig.add_subplot(grid[1], sharex=queue_ax)
    trials_ax = fig.add_subplot(grid[2])
    colours = {"predictive": "tab:green", "reactive": "tab:orange", "dask_adapt": "tab:blue"}
    for name, result in results.items():
        s = result["trials"][0]["series"]
        queue_ax.plot(s["t"], s["waiting"], color=colours[name], label=name)
        workers_ax.step(s["t"], s["workers"], where="post", color=colours[name], label=name)
        wait, cost = result["spread"]["mean_wait_s"], result["spread"]["worker_seconds"]
        trials_ax.scatter(cost["per_trial"], wait["per_trial"], color=colours[name], alpha=0.5, s=25)
        trials_ax.errorbar(cost["mean"], wait["mean"], xerr=cost["sd"] or 0, yerr=wait["sd"] or 0, color=colours[name],
                           marker="o", markersize=8, capsize=4,
                           label=f"{name}: mean wait {wait['mean']:.2f}s, {cost['mean']:.0f} worker-s")
    queue_ax.set_ylabel("tasks waiting for a thread")
    workers_ax.set_ylabel("connected workers")
    workers_ax.set_xlabel("seconds since the first wave (first trial; grey: arrivals)")
    for ax in (queue_ax, workers_ax):
        for at, _ in arrivals[:: max(1, len(arrivals) // 60)]:
            ax.axvline(at, color="grey", alpha=0.08, linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    trials = len(next(iter(results.values()))["trials"])
    trials_ax.set_xlabel("worker-seconds per trial")
    trials_ax.set_ylabel("mean wait per trial (s)")
    trials_ax.set_title(f"{trials} trial(s): each dot a trial, the bars mean ± sd", fontsize=9)
    trials_ax.grid(alpha=0.3)
    trials_ax.legend(loc="upper right", fontsize=8)
    fig.suptitle("Scaling on a real LocalCluster, the operator's scaler: queue and workers, and every trial")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(predictive: dict[str, Any], reactive: dict[str, Any]) -> dict[str, Any]:
    """Predictive against reactive on mean wait and worker-seconds: the goal of the scaler."""
    wait_reduction = 1 - predictive["mean_wait_s"] / reactive["mean_wait_s"] if reactive["mean_wait_s"] > 0 else float("nan")
    extra_worker_seconds = predictive["worker_seconds"] / reactive["worker_seconds"] - 1
    return {
        "mean_wait_reduction": wait_reduction,
        "extra_worker_seconds": extra_worker_seconds,
        "target_met": bool(wait_reduction >= 0.30 and extra_worker_seconds <= 0.10),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one trial of two waves instead of four")
    parser.add_argument("--seed", type=int, default=0, help="arrival seed of the first trial; trial k uses seed + k")
    parser.add_argument("--trials", type=int, default=3, help="trials with different arrival seeds")
    parser.add_argument("--history", type=int, default=110, help="warm-up tasks the advisor trains on (>= 100 to calibrate)")
    args = parser.parse_args(argv)
    started = time.time()
    ran = environment()
    configs = configurations()
    dask.config.set({"distributed.worker.multiprocessing-method": WORKER_START})
    waves = 2 if args.quick else 4
    trial_count = 1 if args.quick else args.trials
    period_s = 22.0

    from scalable.advising.learned_advisor import LearnedAdvisor

    names = tuple(STRATEGIES)
    trials: list[dict[str, dict[str, Any]]] = []
    orders = []
    with tempfile.TemporaryDirectory(prefix="scalable-bench-scaling-") as tmp:
        history = Path(tmp) / "history"
        warm_up(history, args.seed, tasks=args.history)
        advisor = LearnedAdvisor.from_history(history)
        probes = {n: advisor.recommend(task=TASK, input_features=task_inputs(n)) for n in (150, 5000)}
        for n, probe in probes.items():
            print(f"advisor for {n} nodes: {probe.method}, predicted {probe.predicted_duration_s}s (true {0.3 + n / 1000:.2f}s), confidence {probe.confidence}")
        for trial in range(trial_count):
            arrivals = schedule(args.seed + trial, waves, period_s)
            order = names[trial % len(names):] + names[: trial % len(names)]
            orders.append(list(order))
            trials.append({})
            for name in order:
                trial_started = time.time()
                spec, manifest = configs[name]
                trials[-1][name] = run_strategy(name, spec, manifest, arrivals, Path(tmp) / f"{trial}-{name}", advisor)
                print(f"== trial {trial + 1}/{trial_count} (seed {args.seed + trial}): {name}, "
                      f"mean wait {trials[-1][name]['mean_wait_s']:.2f}s, {trials[-1][name]['worker_seconds']:.0f} worker-s, "
                      f"{time.time() - trial_started:.0f}s", flush=True)

    results = {}
    for name in names:
        per_trial = [t[name] for t in trials]
        spreads = {key: spread([r[key] for r in per_trial]) for key, _, _ in FIGURES}
        results[name] = {
            **{key: figure["mean"] for key, figure in spreads.items()},
            "spread": spreads,
            "trials": per_trial,
        }
    rows = [[heading, *(shown(results[name]["spread"][key], fmt) for name in names)] for key, heading, fmt in FIGURES]
    table(rows, ["figure", *names], f"Scaling, the same arrivals per trial, {trial_count} trial(s): mean ± sd (per trial)")

    per_trial_comparison = [compare(t["predictive"], t["reactive"]) for t in trials]
    on_means = compare(results["predictive"], results["reactive"])
    for k, c in enumerate(per_trial_comparison):
        print(f"trial {k + 1}: predictive mean wait {100 * c['mean_wait_reduction']:.1f}% lower than reactive, "
              f"worker-seconds {100 * c['extra_worker_seconds']:+.1f}%")
    print(
        f"means over trials: predictive mean wait {100 * on_means['mean_wait_reduction']:.1f}% lower, worker-seconds "
        f"{100 * on_means['extra_worker_seconds']:+.1f}%; target (>= 30% lower wait at <= +10% worker-seconds) "
        f"{'met' if on_means['target_met'] else 'NOT met'} on the means, in "
        f"{sum(c['target_met'] for c in per_trial_comparison)} of {trial_count} trial(s)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "scaling.png"
    plot(results, schedule(args.seed, waves, period_s), png)
    config = configs["predictive"][0].scaler_config()
    path = write_result(
        "scaling",
        {
            "environment": ran,
            "workload": {
                "waves": [list(WAVES[w % len(WAVES)][:3]) + [list(WAVES[w % len(WAVES)][3])] for w in range(waves)],
                "period_s": period_s, "seeds": [args.seed + t for t in range(trial_count)], "history_tasks": args.history,
                "orders": orders,
                "order": "the order of the strategies rotates between trials, against drift in the machine's load",
                "task": "sleep 0.3 s + 1 ms per node, touch 16 MB + 1 MB per 80 nodes",
            },
            "workflow_spec": {**WORKFLOW, "scaling": {**WORKFLOW["scaling"], "mode": "Predictive | Reactive (dask_adapt: Off)"}},
            "scaler_config": {**vars(config), "min_workers": dict(config.min_workers), "max_workers": dict(config.max_workers),
                              "horizon": config.horizon},
            "scaler_built_by": "scalable.controller.scaling_loop.make_scaler(ScalableWorkflowSpec, advisor)",
            "session_cluster": {"threads_per_worker": THREADS_PER_WORKER, "memory_per_worker": WORKER_MEMORY, "worker_start": WORKER_START},
            "advisor_probes": {
                str(n): {"method": p.method, "predicted_duration_s": p.predicted_duration_s, "true_duration_s": 0.3 + n / 1000, "confidence": p.confidence}
                for n, p in probes.items()
            },
            "results": {
                name: {**{k: v for k, v in r.items() if k != "trials"},
                       "trials": [{k: v for k, v in t.items() if k not in ("series", "waits")} for t in r["trials"]]}
                for name, r in results.items()
            },
            "predictive_vs_reactive": {
                **on_means,
                "per_trial": per_trial_comparison,
                "trials_target_met": sum(c["target_met"] for c in per_trial_comparison),
                "target": ">= 30% lower mean wait at <= 10% more worker-seconds (on the means over trials)",
            },
            "waits": {name: [t["waits"] for t in r["trials"]] for name, r in results.items()},
            "series_first_trial": {name: r["trials"][0]["series"] for name, r in results.items()},
            "plot": str(png.relative_to(RESULTS.parent.parent)),
        },
        started=started,
    )
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
