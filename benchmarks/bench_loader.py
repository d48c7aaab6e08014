"""Loader benchmark: 10,000 runs with 1,000,000 task records, cold and warm load times.

Also times the SWF import of Sandia-Ross (57,882 jobs) when the trace is present.

    python benchmarks/bench_loader.py [--runs 10000] [--tasks-per-run 100] [--repeat 3]

Figures are printed and written to benchmarks/results/loader.json with the command line.
Records are generated as JSON text directly (the writer path is measured by the unit tests),
so that generating a million records takes seconds, not minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "loader.json"
TRACES = Path(os.environ.get("SCALABLE_TRACES_DIR", "/work/shared/data/traces"))

TASKS = ["run_simulation", "load_inputs", "aggregate", "write_outputs", "calibrate", "plot"]
SCENARIOS = ["baseline", "peak_demand", "drought", "high_growth"]


def generate(root: Path, runs: int, tasks_per_run: int, seed: int = 0) -> int:
    """Write ``runs`` run directories of ``tasks_per_run`` task lines each; returns bytes written."""
    rng = random.Random(seed)
    total = 0
    t0 = 1_700_000_000.0
    for r in range(runs):
        run_id = f"20240101T{r // 3600 % 24:02d}{r // 60 % 60:02d}{r % 60:02d}000Z-{r:012x}"
        path = root / run_id
        path.mkdir(parents=True)
        started = t0 + r * 600
        (path / "run.json").write_text(
            json.dumps({"schema_version": 1, "kind": "run", "run_id": run_id, "workflow": "bench",
                        "source": "scalable", "started_at": started, "finished_at": started + 600,
                        "host": None, "namespace": None, "labels": {}})
        )
        lines = []
        for i in range(tasks_per_run):
            task = TASKS[i % len(TASKS)]
            nodes = rng.randint(10, 5000)
            submitted = started + i * 5.0
            duration = nodes * 0.01 + rng.random()
            peak = int(nodes * 1_000_000 * (1 + rng.random() * 0.2))
            lines.append(
                '{"schema_version":1,"kind":"task","run_id":"%s","task":"%s","tag":"demeter","key":"%s-%d",'
                '"input_features":{"num_nodes":%d,"scenario_type":"%s","scale":%.3f},'
                '"submitted_at":%.3f,"started_at":%.3f,"finished_at":%.3f,"duration_s":%.4f,'
                '"cpu_seconds":%.4f,"peak_memory_bytes":%d,"worker_resources":{"cpus":2.0,"memory_bytes":8589934592},'
                '"requested":{"cpus":null,"memory_bytes":null},"state":"succeeded","worker":"tcp://10.0.0.%d:40000"}'
                % (run_id, task, task, i, nodes, SCENARIOS[nodes % 4], rng.random(), submitted, submitted + 1,
                   submitted + 1 + duration, duration, duration * 0.9, peak, i % 250)
            )
        data = ("\n".join(lines) + "\n").encode()
        (path / "tasks.jsonl").write_bytes(data)
        total += len(data)
    return total


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--tasks-per-run", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="warm loads to time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the generated runs directory")
    args = parser.parse_args(argv)

    from scalable.telemetry.loader import load_tasks

    tmp = Path(tempfile.mkdtemp(prefix="scalable-bench-loader-"))
    runs_dir = tmp / "runs"
    figures: dict = {
        "command": " ".join(["python", "benchmarks/bench_loader.py"] + [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "runs": args.runs,
        "task_records": args.runs * args.tasks_per_run,
    }
    try:
        seconds, size = timed(generate, runs_dir, args.runs, args.tasks_per_run)
        figures["generate_s"] = round(seconds, 3)
        figures["jsonl_bytes"] = size

        seconds, table = timed(load_tasks, runs_dir, cache=False)
        figures["parse_no_cache_s"] = round(seconds, 3)
        assert len(table) == figures["task_records"], (len(table), figures["task_records"])

        seconds, table = timed(load_tasks, runs_dir)
        figures["cold_load_s"] = round(seconds, 3)
        figures["cache_bytes"] = sum(p.stat().st_size for p in (runs_dir / ".cache").rglob("*.parquet"))

        warm = []
        for _ in range(args.repeat):
            seconds, table = timed(load_tasks, runs_dir)
            warm.append(round(seconds, 3))
        assert len(table) == figures["task_records"]
        figures["warm_load_s"] = warm
        figures["warm_load_median_s"] = sorted(warm)[len(warm) // 2]

        some_run = sorted(p for p in runs_dir.iterdir() if not p.name.startswith("."))[args.runs // 2]
        with open(some_run / "tasks.jsonl", "rb") as fh:
            first = fh.readline()
        with open(some_run / "tasks.jsonl", "ab") as fh:
            fh.write(first)
        seconds, table = timed(load_tasks, runs_dir)
        figures["load_after_append_to_one_run_s"] = round(seconds, 3)
        assert len(table) == figures["task_records"] + 1
        seconds, table = timed(load_tasks, runs_dir)
        figures["warm_load_after_append_s"] = round(seconds, 3)

        swf = TRACES / "Sandia-Ross-2001-1.1-cln.swf.gz"
        if swf.exists() and os.environ.get("BENCH_SWF", "1") == "1":
            from scalable.telemetry.importers.swf import import_swf
            from scalable.telemetry.store import RunStore

            seconds, result = timed(import_swf, swf, RunStore(tmp / "swf-runs"))
            figures["swf_import_sandia_ross"] = {
                "file": swf.name, "seconds": round(seconds, 3), "imported": result.imported,
                "skipped": dict(result.skipped),
            }
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
