"""Plots of advisor quality, drawn headless (matplotlib's Agg backend).

The trade-off between under-provisioning (OOM kills) and slack (idle reserved memory) is a curve,
not a point: a person comparing advisors should see the whole curve, with each advisor's own
operating point marked, rather than one number per advisor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

__all__ = ["plot_tradeoff"]


def plot_tradeoff(
    curves: Mapping[str, pd.DataFrame],
    path: str | Path,
    *,
    points: Mapping[str, tuple[float, float]] | None = None,
    rates: Sequence[float] = (),
    title: str = "Memory: under-provision rate vs slack",
    max_rate: float = 0.2,
) -> Path:
    """Write a PNG of slack against under-provision rate, one line per advisor.

    ``curves`` come from :func:`scalable.advising.replay.tradeoff_curve`; ``points`` mark where
    each advisor operates as it answered (margin 1); ``rates`` draw the comparison rates.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    colours = {}
    for name, curve in curves.items():
        data = curve.dropna().sort_values("under_provision_rate")
        data = data[data["under_provision_rate"] <= max_rate]
        if data.empty:
            continue
        (line,) = ax.plot(data["under_provision_rate"] * 100, data["slack"] * 100, label=name, lw=1.8)
        colours[name] = line.get_color()
    for name, (rate, slack_value) in (points or {}).items():
        if rate != rate or slack_value != slack_value or rate > max_rate:
            continue
        ax.plot([rate * 100], [slack_value * 100], marker="o", ms=7, ls="none",
                color=colours.get(name, "black"), markeredgecolor="black",
                label=f"{name} as configured")
    for rate in rates:
        ax.axvline(rate * 100, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("under-provision rate (% of jobs whose recommendation < used)")
    ax.set_ylabel("slack (% of reserved memory left idle)")
    ax.set_title(title)
    ax.set_xlim(0, max_rate * 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
