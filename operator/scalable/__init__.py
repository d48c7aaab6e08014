"""Scalable: size and scale Dask workflows from their own telemetry.

The public API is imported lazily so that ``import scalable`` stays cheap (the CLI, the
operator and a worker plugin each need only a part of it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scalable._version import __version__

_EXPORTS = {
    "ResourceAdvisor": "scalable.advising.resource_advisor",
    "LearnedAdvisor": "scalable.advising.learned_advisor",
    "Recommendation": "scalable.advising.recommendation",
    "cross_validate": "scalable.advising.validation",
    "AdaptiveScaler": "scalable.scaling.scaler",
    "ScalerConfig": "scalable.scaling.config",
    "ScalingHistory": "scalable.scaling.history",
    "ScalableSession": "scalable.session.session",
    "RunStore": "scalable.telemetry.store",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from scalable.advising.learned_advisor import LearnedAdvisor
    from scalable.advising.recommendation import Recommendation
    from scalable.advising.resource_advisor import ResourceAdvisor
    from scalable.advising.validation import cross_validate
    from scalable.scaling.config import ScalerConfig
    from scalable.scaling.history import ScalingHistory
    from scalable.scaling.scaler import AdaptiveScaler
    from scalable.session.session import ScalableSession
    from scalable.telemetry.store import RunStore


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scalable' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
