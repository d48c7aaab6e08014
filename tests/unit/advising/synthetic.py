"""Synthetic task histories shaped like ``scalable.telemetry.loader.load_tasks().frame``."""

from __future__ import annotations

import numpy as np
import pandas as pd

GiB = 1024**3
MiB = 1024**2


def make_frame(
    n_tasks: int = 6,
    runs_per_task: int = 200,
    noise: float = 0.15,
    seed: int = 0,
    noisy_tasks: tuple[int, ...] = (),
    noisy_sigma: float = 0.8,
    t0: float = 1.7e9,
) -> pd.DataFrame:
    """Peak memory = f(task, num_nodes, scenario) x lognormal noise, runs spread over time.

    ``noise`` is the sigma of the log-normal noise, so the true 0.98 quantile is known.
    """
    rng = np.random.default_rng(seed)
    n = n_tasks * runs_per_task
    task_id = np.repeat(np.arange(n_tasks), runs_per_task)
    rng.shuffle(task_id)
    num_nodes = rng.integers(100, 2000, n).astype(float)
    scenario = rng.choice(["baseline", "peak_demand", "low_demand"], n)
    base = 0.5 * GiB * (1 + task_id)
    scen = np.select([scenario == "peak_demand", scenario == "low_demand"], [1.5, 0.7], 1.0)
    sigma = np.where(np.isin(task_id, noisy_tasks), noisy_sigma, noise)
    peak = base * scen * (num_nodes / 1000) ** 0.7 * np.exp(rng.normal(0, 1, n) * sigma)
    duration = 30 + num_nodes * 0.05 * (1 + task_id) * np.exp(rng.normal(0, 0.1, n))
    cpus = np.clip(1 + task_id % 3 + rng.normal(0, 0.1, n), 0.1, None)
    submitted = np.arange(n, dtype=float) * 60.0 + t0
    frame = pd.DataFrame(
        {
            "run_id": [f"run-{i // 100}" for i in range(n)],
            "task": [f"task_{t}" for t in task_id],
            "tag": [f"group-{t % 2}" for t in task_id],
            "key": [f"k{i}" for i in range(n)],
            "submitted_at": submitted,
            "started_at": submitted + 1,
            "finished_at": submitted + 1 + duration,
            "end_time": submitted + 1 + duration,
            "duration_s": duration,
            "cpu_seconds": cpus * duration,
            "peak_memory_bytes": peak,
            "worker_cpus": 4.0,
            "worker_memory_bytes": 64.0 * GiB,
            "requested_cpus": np.nan,
            "requested_memory_bytes": np.nan,
            "state": "succeeded",
            "worker": "w1",
            "feature.num_nodes": num_nodes,
            "feature.scenario_type": scenario,
        }
    )
    return frame




def write_runs(root, frame: pd.DataFrame) -> None:
    """Write ``frame`` as telemetry runs through the project's RunStore, as a user's runs are."""
    from scalable import RunStore
    from scalable.telemetry.schema import Resources, TaskObservation

    store = RunStore(root)
    feature_columns = [c for c in frame.columns if c.startswith("feature.")]
    for run_id, part in frame.groupby("run_id", sort=False):
        writer = store.open_run(run_id=run_id)
        records = []
        for row in part.to_dict(orient="records"):
            features = {c[len("feature."):]: row[c] for c in feature_columns if row[c] == row[c]}
            records.append(
                TaskObservation(
                    run_id=run_id, task=row["task"], tag=row["tag"], key=row["key"], input_features=features,
                    submitted_at=row["submitted_at"], started_at=row["started_at"], finished_at=row["finished_at"],
                    duration_s=row["duration_s"], cpu_seconds=row["cpu_seconds"],
                    peak_memory_bytes=int(row["peak_memory_bytes"]),
                    worker_resources=Resources(cpus=row["worker_cpus"], memory_bytes=int(row["worker_memory_bytes"])),
                    state=row["state"],
                )
            )
        writer.append_many(records)
        writer.close()
