"""Shared plumbing of the advisor benchmarks: where traces are, how they become task frames,
and how a result is recorded (figures plus the command, date and machine that produced them).

Traces go through the project's own SWF importer and loader, exactly as a user's would, so the
benchmarks also exercise the mapping documented in issue 3 rather than a private parser. The
imported runs directory is cached outside the repository and reused while the trace file and the
importer are unchanged.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
#: where results go; SCALABLE_BENCH_RESULTS redirects a trial run away from the recorded figures
RESULTS = Path(os.environ.get("SCALABLE_BENCH_RESULTS", ROOT / "results"))
TRACES = Path(os.environ.get("SCALABLE_TRACES_DIR", "/work/shared/data/traces"))
CACHE = Path(os.environ.get("SCALABLE_BENCH_CACHE", Path.home() / ".cache" / "scalable-bench"))

TRACE_FILES = {
    "sandia-ross": "Sandia-Ross-2001-1.1-cln.swf.gz",
    "ctc-sp2": "CTC-SP2-1996-3.1-cln.swf.gz",
    "hpc2n": "HPC2N-2002-2.2-cln.swf.gz",
}


def machine() -> dict[str, Any]:
    """Who measured: cores, load (other engineers share this machine), Python and libraries."""
    import sklearn

    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit_learn": sklearn.__version__,
    }
    try:
        import psutil

        info["memory_total_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # pragma: no cover - psutil is a dependency, but never fail a benchmark on it
        pass
    return info


def write_result(name: str, figures: dict[str, Any], *, started: float, argv: list[str] | None = None) -> Path:
    """``benchmarks/results/<name>.json`` with the exact command that reproduces it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    argv = sys.argv if argv is None else argv
    record = {
        "benchmark": name,
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(argv[0], ROOT.parent), *argv[1:]]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - started, 1),
        "machine": machine(),
        **figures,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(_finite(record), indent=2) + "\n")
    return path


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def trace_path(name: str) -> Path:
    path = TRACES / TRACE_FILES[name]
    if not path.exists():
        raise SystemExit(f"trace {path} not found (set SCALABLE_TRACES_DIR)")
    return path


def _importer_digest() -> str:
    import scalable.telemetry.importers.swf as swf

    return hashlib.sha256(Path(swf.__file__).read_bytes()).hexdigest()[:16]


def trace_frame(name: str) -> pd.DataFrame:
    """The task frame of a trace, imported with ``scalable.telemetry.importers.swf`` and read with
    ``scalable.telemetry.loader.load_tasks`` (cached between runs)."""
    from scalable.telemetry.loader import load_tasks

    source = trace_path(name)
    stamp = f"{source.stat().st_size}-{int(source.stat().st_mtime)}-{_importer_digest()}"
    # One directory per (trace, importer version), filled under a private name and renamed into
    # place, so that benchmarks running at once never see (or delete) a half-written import.
    runs_dir = CACHE / f"runs-{name}-{stamp}"
    if not runs_dir.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = CACHE / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        t0 = time.perf_counter()
        import_swf(source, tmp)
        try:
            os.rename(tmp, runs_dir)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"imported {source.name} in {time.perf_counter() - t0:.1f}s -> {runs_dir}", file=sys.stderr)
            for old in CACHE.glob(f"runs-{name}*"):
                if old != runs_dir:
                    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return load_tasks(runs_dir).frame


def import_swf(source: Path, runs_dir: Path) -> None:
    """Run the project's SWF importer into ``runs_dir``."""
    from scalable.telemetry.importers import swf

    for fn_name in ("import_swf", "import_file", "import_trace"):
        fn = getattr(swf, fn_name, None)
        if fn is not None:
            break
    else:
        raise SystemExit("scalable.telemetry.importers.swf has no import function yet")
    from scalable.telemetry.store import RunStore

    try:
        fn(source, RunStore(runs_dir))
    except TypeError:
        fn(source, runs_dir=runs_dir)


def table(rows: list[list[Any]], headers: list[str], title: str) -> None:
    """Print a table with rich (falls back to plain text)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(title)
        for row in [headers, *rows]:
            print("  ".join(str(c) for c in row))
        return
    t = Table(title=title)
    for h in headers:
        t.add_column(h, justify="left" if h == headers[0] else "right")
    for row in rows:
        t.add_row(*[str(c) for c in row])
    Console().print(t)


def pct(x: Any) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"
