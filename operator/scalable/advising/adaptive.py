"""Adaptive offset: keep the promised miss rate between retrains, under drift.

Split-conformal calibration promises its coverage on runs exchangeable with the held-out
ones. Workflows drift (new inputs, a new tool version), and between two trainings nothing
corrects the answers. Online quantile tracking (the "quantile tracker" of Angelopoulos,
Candes and Tibshirani, *Conformal PID control*, NeurIPS 2023; adaptive conformal inference,
Gibbs and Candes 2021, moves the level instead) does, from nothing but whether each newly
observed run fitted what was recommended for it: after every run a log-memory offset ``o``
moves by ``eta (miss - alpha)``, up (wider) by ``eta (1 - alpha)`` after a miss and down by
``eta alpha`` after a fit. For any sequence of runs, exchangeable or not, the miss rate over
``T`` runs is then within ``(B + eta) / (eta T)`` of ``alpha``, ``B`` bounding the log errors
(their Proposition 1). Moving the level instead cannot widen past the largest held-out
error, which is what a drift beyond anything seen needs.

The offset is one for the advisor (the guarantee is on all its answers). ``eta`` is 0.05 in
natural-log units (5% of memory per miss), chosen before any figure, not tuned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["AdaptiveOffset", "ETA"]

ETA = 0.05


@dataclass
class AdaptiveOffset:
    """The log-memory offset that tracks a promised ``target`` miss rate."""

    target: float
    eta: float = ETA
    offset: float = 0.0
    observed: int = 0
    missed: int = 0

    def observe(self, missed: np.ndarray) -> None:
        """Update with runs in the order they finished: ``missed[i]`` whether run ``i`` used more
        memory than was recommended for it."""
        flags = np.asarray(missed, dtype=bool)
        for miss in flags.tolist():
            self.offset += self.eta * (float(miss) - self.target)
        self.observed += int(flags.size)
        self.missed += int(np.count_nonzero(flags))

    @property
    def factor(self) -> float:
        """What the calibrated memory is multiplied by."""
        return math.exp(min(self.offset, 50.0))

    @property
    def miss_rate(self) -> float | None:
        return self.missed / self.observed if self.observed else None

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "AdaptiveOffset":
        return cls(**{k: state[k] for k in ("target", "eta", "offset", "observed", "missed")})
