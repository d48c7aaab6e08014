"""Importers that turn existing job history (SWF traces, Slurm sacct output, Nextflow traces) into runs."""

from __future__ import annotations

from scalable.telemetry.importers.common import ImportResult, open_text

__all__ = ["FORMATS", "ImportResult", "import_file", "open_text"]

#: importer name -> module:function; each takes (path, store, **options) -> ImportResult
FORMATS = {
    "swf": "scalable.telemetry.importers.swf:import_swf",
    "sacct": "scalable.telemetry.importers.sacct:import_sacct",
    "nextflow": "scalable.telemetry.importers.nextflow:import_nextflow",
}


def import_file(fmt: str, path, store, **options) -> ImportResult:
    """Import ``path`` in format ``fmt`` (one of :data:`FORMATS`) into ``store``."""
    import importlib

    try:
        target = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(sorted(FORMATS))}") from None
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(path, store, **options)
