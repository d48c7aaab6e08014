"""What 5, 20 and 100 runs of a task buy: the LearnedAdvisor against the percentile rule.

    python benchmarks/bench_short_history.py [--seeds 5] [--coverage 0.95]

Users are told "5 runs give basic predictions, 20+ reliable, 100+ high accuracy". This measures
it. Each *family* is a kind of task whose peak memory depends on an input ``size`` in a way
fixed here before any figure was seen (linear with a base, square root, power 1.5, no
dependence at all, heavy-tailed noise, 5% of runs at three times the usual peak). For every
family, history length and seed, both advisors are fitted on ``n`` runs with sizes in
[100, 1000] (the 250Mi floor is set to 1Ki, so the models themselves are measured) and
scored on 200 new runs, *within* the sizes seen and *beyond* them (1000-2000):

* under-provisioned: the share of new runs whose peak exceeds the recommendation (promised:
  at most 1 - coverage);
* reserved / used: memory recommended over memory used, for the runs that fit (1.0 is no
  slack);
* learned: the share of answers the LearnedAdvisor gave from a model (the rest fell back).

The percentile rule is the ResourceAdvisor at the same coverage: it cannot see ``size``.
Figures go to benchmarks/results/short_history.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import pct, table, write_result  # noqa: E402

from scalable.advising.learned_advisor import LearnedAdvisor  # noqa: E402
from scalable.advising.resource_advisor import ResourceAdvisor  # noqa: E402

MiB = 2**20
HISTORY = (5, 20, 100)
NEW_RUNS = 200
SEEN, BEYOND = (100.0, 1000.0), (1000.0, 2000.0)


def _lognormal(rng, sigma, n):
    return rng.lognormal(0.0, sigma, n)


#: name -> peak MiB for sizes, given a random generator
FAMILIES = {
    "linear": lambda rng, s: (50 + 0.8 * s) * _lognormal(rng, 0.05, len(s)),
    "sqrt": lambda rng, s: 40 * np.sqrt(s) * _lognormal(rng, 0.10, len(s)),
    "power 1.5": lambda rng, s: 0.02 * s**1.5 * _lognormal(rng, 0.10, len(s)),
    "flat": lambda rng, s: 600 * _lognormal(rng, 0.15, len(s)),
    "heavy tail": lambda rng, s: (50 + 0.8 * s) * np.exp(0.1 * rng.standard_t(3, len(s))),
    "outliers": lambda rng, s: (50 + 0.8 * s) * _lognormal(rng, 0.05, len(s)) * np.where(rng.random(len(s)) < 0.05, 3.0, 1.0),
}


def frame(family: str, n: int, rng: np.random.Generator) -> pd.DataFrame:
    size = rng.uniform(*SEEN, n)
    start = 1.7e9 + 60.0 * np.arange(n)
    return pd.DataFrame({
        "task": family, "tag": "bench", "state": "succeeded", "peak_memory_bytes": FAMILIES[family](rng, size) * MiB,
        "cpu_seconds": 10.0, "duration_s": 10.0, "submitted_at": start, "end_time": start + 10.0, "feature.size": size,
    })


def score(recommended: np.ndarray, peaks: np.ndarray) -> tuple[float, float]:
    fits = recommended >= peaks
    under = float(np.mean(~fits))
    ratio = float(recommended[fits].sum() / peaks[fits].sum()) if fits.any() else float("nan")
    return under, ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--coverage", type=float, default=0.95)
    args = parser.parse_args(argv)
    started = time.time()
    figures: dict[str, dict] = {}
    rows = []
    for family in FAMILIES:
        for n in HISTORY:
            cells: dict[str, list] = {}
            for seed in range(args.seeds):
                rng = np.random.default_rng(1000 * seed + n)
                history = frame(family, n, rng)
                learned = LearnedAdvisor(coverage=args.coverage, min_memory="1Ki").fit(history)
                rule = ResourceAdvisor(coverage=args.coverage, min_memory="1Ki").fit(history)
                for where, sizes in (("within", SEEN), ("beyond", BEYOND)):
                    size = rng.uniform(*sizes, NEW_RUNS)
                    peaks = FAMILIES[family](rng, size) * MiB
                    recs = learned.recommend_batch([{"task": family, "input_features": {"size": float(s)}} for s in size])
                    mine = np.array([r.memory_bytes for r in recs], dtype=float)
                    theirs = np.full(NEW_RUNS, float(rule.recommend(family).memory_bytes))
                    share = float(np.mean([r.method == "learned" for r in recs]))
                    for advisor, values in (("learned", mine), ("percentile", theirs)):
                        under, ratio = score(values, peaks)
                        cells.setdefault(f"{where}:{advisor}", []).append((under, ratio))
                    cells.setdefault(f"{where}:share", []).append(share)
            key = f"{family}/n={n}"
            figures[key] = {}
            for where in ("within", "beyond"):
                entry = {"learned_share": float(np.mean(cells[f"{where}:share"]))}
                for advisor in ("learned", "percentile"):
                    values = np.array(cells[f"{where}:{advisor}"], dtype=float)
                    entry[advisor] = {
                        "under_provisioned": float(values[:, 0].mean()),
                        "under_provisioned_per_seed": values[:, 0].round(4).tolist(),
                        "reserved_over_used": float(np.nanmean(values[:, 1])),
                    }
                figures[key][where] = entry
                rows.append([family, n, where, pct(entry["learned_share"]),
                             pct(entry["learned"]["under_provisioned"]), f"{entry['learned']['reserved_over_used']:.2f}",
                             pct(entry["percentile"]["under_provisioned"]), f"{entry['percentile']['reserved_over_used']:.2f}"])
    table(rows, ["family", "runs", "sizes", "learned answers", "learned: under", "learned: reserved/used",
                 "percentile: under", "percentile: reserved/used"],
          f"Short history at coverage {args.coverage} ({args.seeds} seeds x {NEW_RUNS} new runs; promised under-provision "
          f"<= {pct(1 - args.coverage)})")
    path = write_result("short_history", {"coverage": args.coverage, "seeds": args.seeds, "new_runs": NEW_RUNS,
                                          "families": list(FAMILIES), "results": figures}, started=started)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
