"""Runtime (duration) prediction on CTC-SP2 and HPC2N, replayed in time order.

    python benchmarks/bench_runtime.py [--quick] [--max-jobs-hpc2n 100000]

Each job's predicted duration uses only jobs that had finished before it was submitted; the
later half is scored. The LearnedAdvisor's ``predicted_duration_s`` is compared with the two
classic references: the user's requested time (what the scheduler is told) and the mean run
time of the user's last two finished jobs (Tsafrir, Etsion, Feitelson 2007), also capped at the
requested time as they use it. Reported: MAE, median absolute error, under-prediction rate
(prediction < actual: a scheduler would have been surprised) and mean bias.

HPC2N has 202,871 jobs; by default its latest 100,000 (40,000 with --quick) are replayed, so the
benchmark stays within minutes on 2 cores. Writes benchmarks/results/runtime.json.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import pct, table, trace_frame, write_result

from scalable.advising.replay import AdvisorPredictor, last_jobs_mean, replay_many, score_duration

REQ = "feature.requested_time_s"


def run_trace(name: str, max_jobs: int | None, args: argparse.Namespace) -> dict:
    from scalable.advising.learned_advisor import LearnedAdvisor

    t0 = time.perf_counter()
    frame = trace_frame(name)
    total = len(frame)
    frame = frame.sort_values(["submitted_at", "end_time"], kind="stable").reset_index(drop=True)
    if max_jobs and len(frame) > max_jobs:
        frame = frame.iloc[-max_jobs:].reset_index(drop=True)
    frame["baseline.last2"] = last_jobs_mean(frame, key="tag", column="duration_s", k=2)
    if REQ in frame.columns:
        req = frame[REQ].astype(float)
        frame["baseline.last2_capped"] = np.fmin(frame["baseline.last2"], req)
    print(f"{name}: {total} jobs, replaying {len(frame)} ({time.perf_counter() - t0:.1f}s to load)", file=sys.stderr)

    learned = AdvisorPredictor("LearnedAdvisor", lambda: LearnedAdvisor(model_type=args.model_type))
    block = args.block_size or (500 if args.quick else 100)
    refit = args.refit_every or (20000 if args.quick else 10000)
    result = replay_many(frame, [learned], target="duration", score_fraction=0.5, block_size=block,
                         refit_every=refit, carry=["baseline.last2", "baseline.last2_capped"])
    sc = result.scored
    truth = sc["used"]
    predictors = {"LearnedAdvisor": sc["LearnedAdvisor"]}
    if REQ in sc.columns:
        predictors["requested time"] = sc[REQ].astype(float)
    predictors["mean of user's last two"] = sc["baseline.last2"]
    if "baseline.last2_capped" in sc.columns:
        predictors["last two, capped at requested"] = sc["baseline.last2_capped"]
    # score every predictor on the same jobs: those where each has an answer
    common = truth.notna()
    for values in predictors.values():
        common &= values.notna()
    scores = {name: score_duration(values[common], truth[common]) for name, values in predictors.items()}
    coverage_of = {name: float(values.notna().mean()) for name, values in predictors.items()}
    return {"trace": name, "jobs_in_trace": total, "jobs_replayed": len(frame), "n_scored": int(common.sum()),
            "scores": scores, "answer_rate": coverage_of,
            "learned_methods": {str(k): int(v) for k, v in sc["LearnedAdvisor:method"].value_counts().items()},
            "replay": {"seconds": result.seconds, "refits": result.refits, "blocks": result.blocks,
                       "block_size": block, "refit_every": refit, "predictors": result.predictors}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model-type", default="gradient_boosting")
    parser.add_argument("--max-jobs-hpc2n", type=int, default=None)
    parser.add_argument("--max-jobs-ctc", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--refit-every", type=int, default=None)
    parser.add_argument("--traces", default="ctc-sp2,hpc2n")
    args = parser.parse_args(argv)
    started = time.time()
    limits = {"ctc-sp2": args.max_jobs_ctc or (40000 if args.quick else None),
              "hpc2n": args.max_jobs_hpc2n or (40000 if args.quick else 100000)}
    results = {}
    for name in args.traces.split(","):
        res = run_trace(name, limits.get(name), args)
        results[name] = res
        rows = []
        for pred, s in res["scores"].items():
            rows.append([pred, f"{s['mae_s']:,.0f}", f"{s['median_abs_error_s']:,.0f}",
                         pct(s["under_prediction_rate"]), f"{s['mean_bias_s']:+,.0f}"])
        table(rows, ["predictor", "MAE (s)", "median |error| (s)", "under-predicted", "mean bias (s)"],
              f"{name}: duration, time-ordered replay, {res['n_scored']} jobs scored "
              f"(later half of {res['jobs_replayed']})")
    figures = {"settings": {"model_type": args.model_type, "quick": args.quick, "max_jobs": limits},
               "traces": results}
    best = {}
    for name, res in results.items():
        mae = {k: v["mae_s"] for k, v in res["scores"].items()}
        best[name] = {"learned_mae_s": mae["LearnedAdvisor"],
                      "best_reference": min((v, k) for k, v in mae.items() if k != "LearnedAdvisor")[1],
                      "learned_beats_all_references": all(mae["LearnedAdvisor"] <= v for k, v in mae.items())}
    figures["verdict"] = best
    path = write_result("runtime", figures, started=started)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
