"""Quick diagnostic replay of the LearnedAdvisor's memory advice on Sandia-Ross (not a benchmark).

    python benchmarks/diag_learned_memory.py [--block-size 250] [--refit-every 5000] [--coverage 0.98]
        [--set min_history=1 --set confidence_threshold=0]

The same time-ordered replay as bench_advisor_replay.py (scalable.advising.replay), with
coarser blocks and refits so that one configuration takes a few minutes: prints the slack at
1%, 2% and 5% under-provisioning against the best tuned percentile rule, the calibration at
``--coverage`` and where the answers came from. Writes nothing into benchmarks/results.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import trace_frame

from scalable.advising.replay import AdvisorPredictor, PercentileBaseline, replay_many, slack_at_rate, summarize_memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coverage", type=float, default=0.98)
    parser.add_argument("--block-size", type=int, default=250)
    parser.add_argument("--refit-every", type=int, default=5000)
    parser.add_argument("--set", action="append", default=[], help="LearnedAdvisor parameter, key=value")
    parser.add_argument("--save", default=None, help="write the per-job answers (pickle) here")
    parser.add_argument("--fallback", action="append", default=[], help="its ResourceAdvisor's parameter, key=value")
    args = parser.parse_args(argv)

    from scalable.advising.learned_advisor import LearnedAdvisor

    params = {}
    for item in args.set:
        key, _, value = item.partition("=")
        params[key] = type(getattr(LearnedAdvisor(), key))(value)
    from scalable.advising.resource_advisor import ResourceAdvisor

    fallback = {}
    for item in args.fallback:
        key, _, value = item.partition("=")
        fallback[key] = type(getattr(ResourceAdvisor(), key))(value)
    if fallback:
        params["fallback_params"] = fallback
    frame = trace_frame("sandia-ross")
    learned = AdvisorPredictor("LearnedAdvisor", lambda: LearnedAdvisor(coverage=args.coverage, min_memory=1024, **params))
    t0 = time.perf_counter()
    result = replay_many(frame, [learned, PercentileBaseline()], target="memory", score_fraction=0.5,
                         block_size=args.block_size, refit_every=args.refit_every)
    summary = summarize_memory(result, ["LearnedAdvisor"])
    sc = result.scored
    if args.save:
        sc.to_pickle(args.save)
    print(f"params {params}, block {args.block_size}, refit every {args.refit_every}: "
          f"{summary['n_scored']} jobs scored in {time.perf_counter() - t0:.0f}s")
    for r in summary["rates"]:
        key = f"{r:g}"
        learned_s = summary["advisors"]["LearnedAdvisor"]["at_rate"][key]
        best = summary["best_percentile"][key]
        print(f"  at {r:.0%}: learned slack {learned_s['slack']:.3f} (margin {learned_s['margin']:.3f}); "
              f"best percentile {best['slack']:.3f} ({best['variant']}); reduction {1 - learned_s['slack'] / best['slack']:+.1%}")
    as_is = summary["advisors"]["LearnedAdvisor"]["as_is"]
    print(f"  as configured (coverage {args.coverage:g}): under-provision {as_is['under_provision_rate']:.2%}, "
          f"slack {as_is['slack']:.3f}")
    for (method, fallback), rows in sc.groupby([sc["LearnedAdvisor:method"], sc["LearnedAdvisor:fallback"].fillna("-")]):
        miss = (rows["LearnedAdvisor"] < rows["used"]).mean()
        s2 = slack_at_rate(rows["LearnedAdvisor"], rows["used"], 0.02)["slack"]
        print(f"  {method}/{fallback}: {len(rows)} jobs, {miss:.2%} under as configured, slack at 2% (own margin) {s2:.3f}, "
              f"share of recommended memory {rows['LearnedAdvisor'].sum() / sc['LearnedAdvisor'].sum():.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
