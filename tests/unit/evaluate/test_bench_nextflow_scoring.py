"""The scoring of benchmarks/bench_nextflow.py on hand-computed examples: the retry rule and the
wastage formula (failed attempts' allocation x runtime + the successful one's slack x runtime)."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from bench_nextflow import GB_H, Baselines, attempts, wastage_bytes_s  # noqa: E402

GB = 1e9


def test_doubling_until_it_fits_and_wastage_by_hand():
    # 3 GB for a 10 GB peak, 2 h: fails at 3 and 6, fits at 12.
    tried = attempts(3 * GB, 10 * GB)
    assert tried == [3 * GB, 6 * GB, 12 * GB]
    # (3 + 6) GB x 2 h failed + (12 - 10) GB x 2 h slack = 22 GB*h
    assert wastage_bytes_s(tried, 10 * GB, 7200.0) / GB_H == pytest.approx(22.0)


def test_a_first_allocation_that_fits_wastes_only_its_slack():
    tried = attempts(10 * GB, 10 * GB)
    assert tried == [10 * GB]
    assert wastage_bytes_s(tried, 10 * GB, 3600.0) == 0.0
    assert wastage_bytes_s(attempts(16 * GB, 10 * GB), 10 * GB, 1800.0) / GB_H == pytest.approx(3.0)


def test_a_retry_answer_not_above_the_failed_allocation_is_doubled():
    tried = attempts(4 * GB, 10 * GB, retry=lambda failed: failed)  # a useless answer
    assert tried == [4 * GB, 8 * GB, 16 * GB]
    tried = attempts(4 * GB, 10 * GB, retry=lambda failed: failed + 7 * GB)
    assert tried == [4 * GB, 11 * GB]


def test_linear_baseline_adds_its_largest_residual_and_unseen_processes_get_the_request():
    known = pd.DataFrame({
        "task": ["a"] * 3, "state": "succeeded", "peak_memory_bytes": [2 * GB, 4 * GB, 7 * GB],
        "feature.input_bytes": [1.0, 2.0, 3.0], "requested_memory_bytes": 8 * GB,
    })
    base = Baselines(known)
    # fit: peak = 2.5 GB x input - 2/3 GB; residuals +1/6, -1/3, +1/6 GB: 9.5 GB at input 4
    row = {"task": "a", "feature.input_bytes": 4.0, "requested_memory_bytes": 8 * GB}
    assert base.first("linear + max residual", row) == pytest.approx(9.5 * GB)
    unseen = {"task": "b", "feature.input_bytes": 4.0, "requested_memory_bytes": 8 * GB}
    for strategy in ("nf-core defaults", "p95 of process", "linear + max residual"):
        assert base.first(strategy, unseen) == 8 * GB
