"""Runtime (duration) prediction on CTC-SP2 and HPC2N, replayed in time order.

    python benchmarks/bench_runtime.py [--quick] [--max-jobs-hpc2n 100000]

Each job's predicted duration uses only jobs that had finished before it was submitted; the
later half is scored. The LearnedAdvisor's ``predicted_duration_s`` is compared with the two
classic references: the user's requested time (what the scheduler is told) and the mean run
time of the user's last two finished jobs (Tsafrir, Etsion, Feitelson 2007), also capped at the
requested time as they use it. Reported: MAE, median absolute error, under-prediction rate
(prediction < actual: a scheduler would have been surprised) and mean bias.

HPC2N has 202,871 jobs; by default its latest 60,000 (30,000 with --quick) are replayed, so the
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


def num(x, fmt: str = ",.0f") -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


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
    block = args.block_size or (500 if args.quick else 200)
    refit = args.refit_every or (20000 if args.quick else 10000)
    result = replay_many(frame, [learned], target="duration", score_fraction=0.5, block_size=block,
                         refit_every=refit, carry=["baseline.last2", "baseline.last2_capped"])
    sc = result.scored
    truth = sc["used"]
    predictors = {"LearnedAdvisor": sc["LearnedAdvisor"]}
    if REQ in sc.columns:
        predictors["requested time"] = sc[REQ].astype(float)
    predictors["mean of user's last two"] = sc["baseline.last2"]
    if REQ in sc.columns:
        # not an advisor: shows what using the requested time as a ceiling would add (a job is
        # killed at its requested time, so the true duration rarely exceeds it)
        predictors["LearnedAdvisor capped at requested (diagnostic)"] = np.fmin(sc["LearnedAdvisor"], sc[REQ].astype(float))
    if "baseline.last2_capped" in sc.columns:
        predictors["last two, capped at requested"] = sc["baseline.last2_capped"]
    # The references are scored on the same jobs (those where each reference has an answer: the
    # last-two rule needs two finished jobs of the user). The LearnedAdvisor is scored on the jobs
    # where it gave a duration at all, with the references on exactly those jobs beside it; its
    # answer rate says how often that was.
    common = truth.notna()
    for name, values in predictors.items():
        if not name.startswith("LearnedAdvisor"):
            common &= values.notna()
    learned_rows = common & predictors["LearnedAdvisor"].notna()
    scores = {}
    for name, values in predictors.items():
        rows = learned_rows if name.startswith("LearnedAdvisor") else common
        scores[name] = score_duration(values[rows], truth[rows])
    on_learned_rows = {name: score_duration(values[learned_rows], truth[learned_rows])
                       for name, values in predictors.items()}
    coverage_of = {name: float(values[common].notna().mean()) if common.any() else 0.0
                   for name, values in predictors.items()}
    return {"trace": name, "jobs_in_trace": total, "jobs_replayed": len(frame), "n_scored": int(common.sum()),
            "n_learned_answered": int(learned_rows.sum()), "scores": scores,
            "scores_on_jobs_learned_answered": on_learned_rows, "answer_rate": coverage_of,
            "learned_methods": {str(k): int(v) for k, v in sc["LearnedAdvisor:method"].value_counts().items()},
            "replay": {"seconds": result.seconds, "refits": result.refits, "blocks": result.blocks,
                       "block_size": block, "refit_every": refit, "predictors": result.predictors}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model-type", default="gradient_boosting")
    parser.add_argument("--max-jobs-hpc2n", type=int, default=None)
    parser.add_argument("--max-jobs-ctc", type=int, default=None, help="default: all 77,222 (40,000 with --quick)")
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--refit-every", type=int, default=None)
    parser.add_argument("--traces", default="ctc-sp2,hpc2n")
    args = parser.parse_args(argv)
    started = time.time()
    limits = {"ctc-sp2": args.max_jobs_ctc or (40000 if args.quick else None),
              "hpc2n": args.max_jobs_hpc2n or (30000 if args.quick else 60000)}
    results = {}
    for name in args.traces.split(","):
        res = run_trace(name, limits.get(name), args)
        results[name] = res
        for key, label in (("scores", f"{res['n_scored']} jobs scored (later half of {res['jobs_replayed']}); "
                                          f"LearnedAdvisor answered {pct(res['answer_rate']['LearnedAdvisor'])}"),
                           ("scores_on_jobs_learned_answered",
                            f"only the {res['n_learned_answered']} jobs the LearnedAdvisor answered")):
            rows = []
            for pred, s in res[key].items():
                rows.append([pred, num(s["mae_s"]), num(s["median_abs_error_s"]),
                             pct(s["under_prediction_rate"]), num(s["mean_bias_s"], "+,.0f")])
            table(rows, ["predictor", "MAE (s)", "median |err| (s)", "under", "bias (s)"],
                  f"{name} duration, time-ordered: {label}")
    figures = {"settings": {"model_type": args.model_type, "quick": args.quick, "max_jobs": limits},
               "traces": results}
    best = {}
    for name, res in results.items():
        mae = {k: v["mae_s"] for k, v in res["scores_on_jobs_learned_answered"].items()}
        refs = {k: v for k, v in mae.items() if not k.startswith("LearnedAdvisor") and v == v}
        best[name] = {"learned_answer_rate": res["answer_rate"]["LearnedAdvisor"],
                      "learned_mae_s": mae["LearnedAdvisor"],
                      "best_reference": min(refs, key=refs.get) if refs else None,
                      "learned_beats_all_references": bool(refs) and mae["LearnedAdvisor"] == mae["LearnedAdvisor"]
                      and all(mae["LearnedAdvisor"] <= v for v in refs.values())}
    figures["verdict"] = best
    path = write_result("runtime", figures, started=started)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
