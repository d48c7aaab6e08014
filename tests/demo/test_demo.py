"""`make demo` works as written: hack/demo.py end to end (a smaller workload than the default),
the operator scales up from the queue and back, the recommendation is shown, the plot written."""

from __future__ import annotations

import subprocess
import sys

from tests.support.testenv import REPO_ROOT


def test_the_demo_runs_the_whole_loop_and_tears_down(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "hack" / "demo.py"), "--output", str(tmp_path), "--waves", "40,60",
         "--max-workers", "3", "--timeout", "240"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Recommendation for the Dask workers" in out and "AdvisorModel sweep-model: phase" in out
    assert "replicas went 1 -> 3 -> 1" in out, out[-3000:]
    assert "scale_up" in out and "scale_down" in out
    png = tmp_path / "demo.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tearing everything down" in out
