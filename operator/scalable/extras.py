"""The optional parts of the install, and the one message a missing one gives.

``pip install scalable-operator`` is the library and the CLI (telemetry, advisors, scaler, a
session on a LocalCluster). The Kubernetes parts, the operator (``scalable operator run``)
and a session's ``kubernetes`` target, need the ``[operator]`` extra (kopf, kr8s, kubernetes,
dask-kubernetes, aiohttp, prometheus-client, promql-parser). They import it only when they
start, through :func:`require`, so that a core install fails there with the command to run instead of a
traceback from deep inside an import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "OPERATOR", "OPERATOR_MODULES", "install_hint", "require"]

#: the extra the operator and the Kubernetes session target need
OPERATOR = "operator"
#: the top-level modules the [operator] extra installs (pyproject.toml; a unit test keeps them equal)
OPERATOR_MODULES = ("kopf", "kr8s", "kubernetes", "dask_kubernetes", "aiohttp", "prometheus_client", "promql_parser")


class MissingExtraError(ImportError):
    """A part of scalable was used whose optional dependencies are not installed."""


def install_hint(extra: str) -> str:
    return f"pip install 'scalable-operator[{extra}]'"


def require(module: str, *, extra: str, needed_by: str) -> ModuleType:
    """Import ``module``; if it or anything it imports is not installed, raise
    :class:`MissingExtraError` saying what needs it and the pip command that installs it.

    Any missing module counts, not only the extra's own: a half-installed extra (kopf without
    aiohttp) is fixed by the same command.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if missing.partition(".")[0] == "scalable":  # our own module: a bug, not an install to fix
            raise
        raise MissingExtraError(
            f"{needed_by} needs the [{extra}] extra, and {missing} is not installed: {install_hint(extra)}",
            name=missing,
        ) from exc
