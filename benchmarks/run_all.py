"""Run every benchmark and write benchmarks/results/SUMMARY.md (what `make bench` does).

    python benchmarks/run_all.py [--quick] [--only replay,runtime,inference,loader,scaling]

Each benchmark runs in its own process (a crash or a memory peak of one cannot distort another)
and records its own JSON under benchmarks/results/. The summary is then written from those JSON
files alone, so it can be regenerated without rerunning anything (``--summary-only``). A
benchmark that fails is reported in the summary and makes the exit code 1; the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("SCALABLE_BENCH_RESULTS", HERE / "results"))

#: name -> (script, quick arguments, result file)
BENCHMARKS = {
    "loader": ("bench_loader.py", ["--repeat", "2"], "loader.json"),
    "replay": ("bench_advisor_replay.py", ["--quick"], "advisor_replay.json"),
    "ceiling": ("diag_memory_ceiling.py", [], "memory_ceiling.json"),
    "runtime": ("bench_runtime.py", ["--quick"], "runtime.json"),
    "inference": ("bench_inference.py", ["--quick"], "inference.json"),
    "scaling": ("bench_scaling.py", ["--quick"], "scaling.json"),
    "operator": ("bench_operator.py", ["--quick"], "operator.json"),
}


def run(names: list[str], quick: bool) -> dict[str, dict]:
    status = {}
    for name in names:
        script, quick_args, _ = BENCHMARKS[name]
        path = HERE / script
        if not path.exists():
            status[name] = {"status": "absent", "seconds": 0.0}
            print(f"== {name}: {script} not present, skipped", flush=True)
            continue
        cmd = [sys.executable, str(path), *(quick_args if quick else [])]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=HERE.parent)
        seconds = time.perf_counter() - t0
        status[name] = {"status": "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                        "seconds": round(seconds, 1)}
        print(f"== {name}: {status[name]['status']} in {seconds:.0f}s", flush=True)
    return status


def _across_trials(result: dict, key: str, fmt: str) -> str:
    """A scaling figure as mean ± sd across trials (a result without spread: its one value)."""
    figure = (result.get("spread") or {}).get(key) or {"mean": result.get(key), "sd": None}
    if figure["mean"] is None:
        return "n/a"
    return fmt.format(figure["mean"]) + (f" ± {fmt.format(figure['sd'])}" if figure.get("sd") is not None else "")


def _load(file: str) -> dict | None:
    path = RESULTS / file
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _yes(flag) -> str:
    return "n/a" if flag is None else ("met" if flag else "**not met**")


def summary_markdown(status: dict[str, dict] | None = None) -> str:
    lines = ["# Benchmark summary", "",
             f"Written by `python benchmarks/run_all.py` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC "
             f"from the JSON files in this directory; each section names the command that produced its figures. "
             f"The machine is shared (2 cores, other builds running): load averages are recorded with each result.", ""]
    if status:
        lines += ["| benchmark | status | seconds |", "|---|---|---|"]
        lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in status.items()]
        lines.append("")

    rep = _load("advisor_replay.json")
    lines += ["## Memory advice, Sandia-Ross, time-ordered replay", ""]
    if rep:
        lines += [f"`{rep['command']}` ({rep['date']}, {rep['machine']['cores']} cores, load "
                  f"{rep['machine']['load_avg_1_5_15']}, {rep['wall_seconds']} s)", "",
                  f"{rep['n_scored']} jobs scored (later half of {rep['jobs']}); each recommendation saw only jobs "
                  "finished before its submit. Slack = idle share of recommended memory over the jobs that fit; "
                  "every advisor is scaled by the margin that gives exactly the stated under-provision rate.", "",
                  "| under-provision | LearnedAdvisor slack | ResourceAdvisor slack | best tuned percentile | LearnedAdvisor's slack reduction (negative: more slack) |",
                  "|---|---|---|---|---|"]
        for r, c in rep["equal_rate"].items():
            grid = c["grid_best"]
            lines.append(f"| {_pct(float(r))} | {_pct(c['learned_slack'])} | {_pct(c['resource_advisor_slack'])} | "
                         f"{_pct(c['best_percentile_slack'])} ({c['best_percentile']}) | {_pct(c['slack_reduction'])} |")
        t = rep["targets"]["slack_reduction_at_2pct"]
        cal = rep["calibration"]
        lines += ["", f"- Target: at least 25% less slack at 2% under-provision: {_yes(t['met'])} "
                      f"({_pct(t['measured'])}).",
                  f"- Calibration at coverage={cal['coverage']}: LearnedAdvisor under-provisions "
                  f"{_pct(cal['learned']['under_provision_rate'])} of jobs (promised {_pct(cal['promised_under_provision'])}), "
                  f"slack {_pct(cal['learned']['slack'])}; ResourceAdvisor {_pct(cal['resource']['under_provision_rate'])}, "
                  f"slack {_pct(cal['resource']['slack'])}.",
                  f"- Trade-off plot: [{Path(rep['plot']).name}]({Path(rep['plot']).name})"]
        for m, d in (rep.get("by_method") or {}).items():
            d2 = d.get("0.02", {})
            lines.append(f"- Diagnostic, jobs the LearnedAdvisor answered with method `{m}` ({d['n']} jobs, "
                         f"{_pct(d['share'])}): slack at 2% {_pct(d2.get('learned_slack'))} vs best percentile rule on "
                         f"the same jobs {_pct(d2.get('best_percentile_slack'))}.")
        cf = rep.get("counterfactual_default_to_global_p95")
        if cf and cf.get("n_default"):
            lines.append(f"- Counterfactual (not an advisor): the {cf['n_default']} jobs whose task and user were never seen "
                         f"(fallback kind `default`), answered with the global p95 of known history instead: LearnedAdvisor "
                         f"slack at 1/2/5% would be " + " / ".join(_pct(cf[r]) for r in ("0.01", "0.02", "0.05")) + ".")
        for name, e in rep["summary"]["advisors"].items():
            if name.startswith("LearnedAdvisor["):
                lines.append(f"- Variant {name}: slack at 1/2/5% = "
                             + " / ".join(_pct(e["at_rate"][r]["slack"]) for r in e["at_rate"])
                             + f"; as configured {_pct(e['as_is']['under_provision_rate'])} under, "
                               f"{_pct(e['as_is']['slack'])} slack.")
        lines.append("")
    else:
        lines += ["(no result yet: `python benchmarks/bench_advisor_replay.py`)", ""]
    ceiling = _load("memory_ceiling.json")
    if ceiling:
        b = ceiling["best_model_at_2pct"]
        lines += ["### How far the trace allows it (diagnostic)", "",
                  f"`{ceiling['command']}`: features computed exactly as of each job's submission, models trained "
                  f"once on the earlier half ({ceiling['n_train']} jobs), margin-tuned like the benchmark.", "",
                  "| predictor | slack at 1% | at 2% | at 5% |", "|---|---|---|---|"]
        for name, v in ceiling["slack_at_rate"].items():
            lines.append(f"| {name} | {_pct(v['0.01'])} | {_pct(v['0.02'])} | {_pct(v['0.05'])} |")
        sp = ceiling["spike"]
        lines += ["", f"- Best model at 2%: {b['name']}, {_pct(b['slack_reduction'])} less slack than p50 of task "
                      f"(the target asks 25%).",
                  f"- The jobs that need the headroom ({_pct(sp['share_of_scored'])} of jobs above x1.35 of the predicted "
                  f"median) are barely recognisable at submit time: classifier ROC AUC {sp['classifier_roc_auc']:.2f} "
                  f"(0.5 = chance).", ""]

    rt = _load("runtime.json")
    lines += ["## Runtime prediction, CTC-SP2 and HPC2N", ""]
    if rt:
        lines += [f"`{rt['command']}` ({rt['date']}, load {rt['machine']['load_avg_1_5_15']}, {rt['wall_seconds']} s)", ""]
        def num(x, fmt=",.0f"):
            return "n/a" if x is None else format(x, fmt)

        for name, res in rt["traces"].items():
            answered = res.get("answer_rate", {}).get("LearnedAdvisor")
            lines += [f"**{name}**: {res['n_scored']} jobs scored (later half of the {res['jobs_replayed']} latest of "
                      f"{res['jobs_in_trace']}); references on the same jobs; the LearnedAdvisor gave a duration for "
                      f"{_pct(answered)} of them and its row is scored on those.", "",
                      "| predictor | MAE (s) | median abs error (s) | under-predicted | mean bias (s) |", "|---|---|---|---|---|"]
            for pred, s in res["scores"].items():
                lines.append(f"| {pred} | {num(s['mae_s'])} | {num(s['median_abs_error_s'])} | "
                             f"{_pct(s['under_prediction_rate'])} | {num(s['mean_bias_s'], '+,.0f')} |")
            lines.append("")
    else:
        lines += ["(no result yet: `python benchmarks/bench_runtime.py`)", ""]

    inf = _load("inference.json")
    lines += ["## Inference and training", ""]
    if inf:
        f, m = inf["figures"], inf["met"]
        lines += [f"`{inf['command']}` ({inf['date']}, {inf['machine']['cores']} cores, load "
                  f"{inf['machine']['load_avg_1_5_15']})", "",
                  "| figure | measured | target | |", "|---|---|---|---|",
                  f"| recommend latency, median | {f['latency_median_ms']:.3f} ms | < 1 ms | {_yes(m['latency_median_ms'])} |",
                  f"| recommend latency, p99 | {f['latency_p99_ms']:.3f} ms | | |",
                  f"| recommend_batch throughput | {f['batch_per_s']:,.0f} /s | >= 50,000 /s | {_yes(m['batch_per_s'])} |",
                  f"| training, {f['records']:,} records | {f['train_s']:.1f} s | < 60 s | {_yes(m['train_s'])} |",
                  f"| peak RSS of the training process | {f['peak_rss_gib']:.2f} GiB | < 2 GiB | {_yes(m['peak_rss_gib'])} |", ""]
        if "train_cpu_s" in f:
            lines += [f"Wall times above include the neighbours' load. What the work itself cost in CPU time: training "
                      f"{f['train_cpu_s']:.1f} CPU-s (all threads), batch {f['batch_per_cpu_s']:,.0f} recommendations per "
                      f"CPU-second, single recommend {f['latency_mean_cpu_ms']:.3f} CPU-ms on average.", ""]
    else:
        lines += ["(no result yet: `python benchmarks/bench_inference.py`)", ""]

    lo = _load("loader.json")
    lines += ["## Loader (telemetry)", ""]
    if lo:
        lines += [f"`{lo.get('command', 'python benchmarks/bench_loader.py')}`", "",
                  f"- {lo.get('runs', '?'):,} runs, {lo.get('task_records', '?'):,} task records: "
                  f"parse without cache {lo.get('parse_no_cache_s')} s, cold load {lo.get('cold_load_s')} s, "
                  f"warm load (median) {lo.get('warm_load_median_s')} s (target < 5 s warm), after appending to one run "
                  f"{lo.get('load_after_append_to_one_run_s')} s."]
        swf = lo.get("swf_import_sandia_ross")
        if swf:
            lines.append(f"- SWF import of {swf['file']}: {swf['imported']} jobs in {swf['seconds']} s.")
        lines.append("")
    else:
        lines += ["(no result yet: `python benchmarks/bench_loader.py`)", ""]

    sc = _load("scaling.json")
    if sc:
        lines += ["## Scaling on a real LocalCluster", "",
                  f"`{sc.get('command', 'python benchmarks/bench_scaling.py')}` ({sc.get('date')}, load "
                  f"{sc.get('machine', {}).get('load_avg_1_5_15')}); plot: [scaling.png](scaling.png)", "",
                  f"{len(sc.get('workload', {}).get('seeds', [])) or '?'} trial(s); mean ± sd across trials.", "",
                  "| strategy | mean wait | p50 wait | p95 wait | makespan | worker-seconds |", "|---|---|---|---|---|---|"]
        for name, r in sc.get("results", {}).items():
            lines.append(f"| {name} | {_across_trials(r, 'mean_wait_s', '{:.2f}')} s | {_across_trials(r, 'p50_wait_s', '{:.2f}')} s "
                         f"| {_across_trials(r, 'p95_wait_s', '{:.2f}')} s | {_across_trials(r, 'makespan_s', '{:.1f}')} s "
                         f"| {_across_trials(r, 'worker_seconds', '{:.0f}')} |")
        cmp_ = sc.get("predictive_vs_reactive") or {}
        reduction, extra = cmp_.get("mean_wait_reduction"), cmp_.get("extra_worker_seconds")
        if isinstance(reduction, (int, float)) and isinstance(extra, (int, float)):
            verdict = "met" if cmp_.get("target_met") else "NOT met"
            lines += ["", f"Predictive vs reactive: mean wait {100 * reduction:.1f}% lower at {100 * extra:+.1f}% "
                          f"worker-seconds; target ({cmp_.get('target', '>= 30% lower mean wait at <= 10% more worker-seconds')}) "
                          f"{verdict}" + (f"; met in {cmp_['trials_target_met']} of {len(cmp_.get('per_trial', []))} trials taken alone"
                                          if "trials_target_met" in cmp_ else "") + "."]
        elif cmp_:
            lines += ["", f"Predictive vs reactive: {json.dumps(cmp_)}"]
        lines.append("")
    else:
        lines += ["(no result yet: `python benchmarks/bench_scaling.py`)", ""]

    op = _load("operator.json")
    if op:
        lines += ["## Operator at scale", "",
                  f"`{op.get('command')}` ({op.get('date')}): {op.get('workflows')} ScalableWorkflows, "
                  f"{op.get('poll_interval_s')} s polls, real API server and Prometheus.", "",
                  "| figure | measured |", "|---|---|",
                  f"| all reconciled after start | {op.get('startup_until_all_reconciled_s')} s |",
                  f"| CPU in steady state | {op.get('steady_cpu_cores')} cores |",
                  f"| memory (max RSS) | {op.get('rss_max_mib')} MiB |",
                  f"| queue change -> replica patch, p50 / p95 / max | {op.get('latency_p50_s')} / "
                  f"{op.get('latency_p95_s')} / {op.get('latency_max_s')} s |", "", f"{op.get('note', '')}", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick variant of each benchmark")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--summary-only", action="store_true", help="rewrite SUMMARY.md from existing results")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    status = None if args.summary_only else run(names, args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "SUMMARY.md").write_text(summary_markdown(status))
    print(f"wrote {RESULTS / 'SUMMARY.md'}")
    failed = [n for n, s in (status or {}).items() if s["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
