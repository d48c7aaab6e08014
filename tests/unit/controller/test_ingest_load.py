"""50 concurrent ingestion clients on loopback: no errors, every batch stored once, memory bounded.

A smaller run of benchmarks/bench_ingest.py (which records the full figures in
benchmarks/results/ingest.json: 50 clients x 20 batches x 200 records).

Rerun: ``pytest tests/unit/controller/test_ingest_load.py -q``
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from bench_ingest import run  # noqa: E402


@pytest.mark.slow
def test_fifty_concurrent_clients(tmp_path):
    figures = run(clients=50, batches=3, records=100, timeout=60, root=str(tmp_path))
    assert figures["errors"] == 0, figures["statuses"]
    assert figures["records_on_disk"] == figures["records_sent"] == 15_000
    assert figures["every_batch_exactly_once"] and figures["skipped_lines"] == 0
    assert figures["wall_s"] < 60
    assert figures["server_rss_peak_mib"] < 400, f"the ingestion server grew to {figures['server_rss_peak_mib']} MiB"
