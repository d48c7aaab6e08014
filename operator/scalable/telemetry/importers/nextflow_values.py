"""The values of a Nextflow trace file, read in both of the forms Nextflow writes them.

Nextflow renders each trace field by its type (``TraceRecord.FIELDS`` in Nextflow's source:
``mem``, ``time``, ``date``, ``perc``, ``num``, ``str``). By default the values are for people;
with ``trace.raw = true`` every non-primitive type is written as a plain number instead:

========  ==============================================  ======================================
type      default (human-readable)                        raw
========  ==============================================  ======================================
mem       ``MemoryUnit``: ``0``, ``512 B``, ``2 KB``,     bytes
          ``1.2 GB``: units B KB MB GB TB PB EB ZB,
          each 1024 times the one before, one decimal
time      ``Duration``: ``120ms``, ``4.5s``, ``3m 4s``,   milliseconds
          ``1h 2m 3s``, ``1d 2h``
date      ``yyyy-MM-dd HH:mm:ss.SSS`` in the local time   milliseconds since the epoch
          zone of the JVM that ran Nextflow
perc      ``85.3%``                                       ``85.3``
========  ==============================================  ======================================

A missing value is ``-`` in both. The human forms always carry a unit, a ``%`` or a date's
dashes (memory's ``0`` is the one bare number, and it means 0 bytes either way), so each value
says by itself which form it is in: a file may mix them, and no setting has to be guessed.

Memory units are binary as Nextflow reads and prints them (``MemoryUnit``: ``1 KB`` = 1024 B,
``1 GB`` = 1024**3 B), and a value is rounded to the nearest byte, halves up, as Nextflow
rounds; arithmetic is decimal, so ``1.2 GB`` is exactly 1288490189 bytes. Durations are summed
per component and rounded to the millisecond the same way. Nextflow's long unit names
(``sec``, ``mins``, ``hours``, ...) and its legacy ``hh:mm:ss`` are read too.

Sources: Nextflow's trace documentation (https://docs.seqera.io/nextflow/reference/config/trace,
https://www.nextflow.io/docs/latest/tracing.html: "trace.raw ... date and time are reported as
milliseconds and memory as number of bytes") and, for the exact units and rounding, Nextflow's
``MemoryUnit``, ``Duration`` and ``TraceRecord`` classes (facts only, no code taken).

Each reader returns None for a missing value and raises ValueError for an unreadable one.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

__all__ = ["MISSING", "parse_memory", "parse_duration", "parse_percent", "parse_timestamp", "parse_count"]

#: what a trace (or a spreadsheet made from one) writes for "no value"
MISSING = frozenset({"", "-", "nan", "none", "null", "na", "n/a"})

_MAX_BYTES = 2**63 - 1
#: larger numbers are not measurements (and would be slow to expand into integers)
_MAX_DIGITS = 30
_MEMORY_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6, "Z": 7}
_MEMORY = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGTPEZ]?)(?:I?B)?", re.IGNORECASE)
_NUMBER = re.compile(r"[+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)\s*")
_LEGACY_DURATION = re.compile(r"(\d{1,2}):(\d{1,2}):(\d{1,2})")
_MILLIS_PER_UNIT = {
    **dict.fromkeys(("ms", "milli", "millis"), 1),
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1000),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60_000),
    **dict.fromkeys(("h", "hour", "hours"), 3_600_000),
    **dict.fromkeys(("d", "day", "days"), 86_400_000),
}
#: later than any trace can be (year 9999), in epoch milliseconds
_MAX_EPOCH_MS = 253_402_300_799_999


def _is_missing(text: str) -> bool:
    return text.strip().lower() in MISSING


def _decimal(text: str) -> Decimal:
    """A finite, non-negative decimal from a plain number; ValueError otherwise."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not value.is_finite() or value.adjusted() > _MAX_DIGITS:
        raise ValueError(f"number out of range: {text!r}")
    return value


def _round(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def parse_memory(text: str) -> int | None:
    """Bytes in a trace memory value: raw bytes (``1288490189``) or ``1.2 GB`` / ``512 MB`` / ``0``."""
    text = text.strip()
    if _is_missing(text):
        return None
    if _NUMBER.fullmatch(text):
        value = _round(_decimal(text))
    else:
        match = _MEMORY.fullmatch(text)
        if not match:
            raise ValueError(f"not a memory size: {text!r}")
        number, unit = match.groups()
        value = _round(_decimal(number) * 1024 ** _MEMORY_UNITS[unit.upper()])
    if value > _MAX_BYTES:
        raise ValueError(f"memory size out of range: {text!r}")
    return value


def parse_duration(text: str) -> float | None:
    """Seconds in a trace duration: raw milliseconds (``184000``) or ``3m 4s`` / ``4.5s`` / ``120ms``."""
    text = text.strip()
    if _is_missing(text):
        return None
    if _NUMBER.fullmatch(text):
        millis = _decimal(text)
    elif legacy := _LEGACY_DURATION.fullmatch(text):
        hours, minutes, seconds = (int(part) for part in legacy.groups())
        millis = Decimal((hours * 3600 + minutes * 60 + seconds) * 1000)
    else:
        millis, position = Decimal(0), 0
        for match in _DURATION_PART.finditer(text):
            if match.start() != position:
                break
            number, unit = match.groups()
            factor = _MILLIS_PER_UNIT.get(unit)
            if factor is None:
                raise ValueError(f"unknown duration unit {unit!r} in {text!r}")
            millis += _round(_decimal(number) * factor)
            position = match.end()
        if position == 0 or position != len(text):
            raise ValueError(f"not a duration: {text!r}")
    seconds = float(millis) / 1000
    if not math.isfinite(seconds):
        raise ValueError(f"duration out of range: {text!r}")
    return seconds


def parse_percent(text: str) -> float | None:
    """A trace percentage as a number of percent: ``85.3%`` and raw ``85.3`` are both 85.3."""
    text = text.strip()
    if _is_missing(text):
        return None
    value = float(_decimal(text.removesuffix("%").strip()))
    if not math.isfinite(value):
        raise ValueError(f"percentage out of range: {text!r}")
    return value


def parse_count(text: str) -> int | float | None:
    """A plain trace number (``cpus``, ``attempt``, ``exit``): int when whole."""
    text = text.strip()
    if _is_missing(text):
        return None
    value = _decimal(text)
    if value == value.to_integral_value():
        if value > _MAX_BYTES:
            raise ValueError(f"number out of range: {text!r}")
        return int(value)
    return float(value)


def parse_timestamp(text: str, zone: tzinfo | None) -> float | None:
    """Epoch seconds of a trace date: raw epoch milliseconds or ``2024-03-01 12:00:00.123``.

    A date without an offset is wall-clock time in ``zone``, or in this machine's local time
    zone when ``zone`` is None (what Nextflow wrote if it ran here); an ISO date with an offset
    (as Seqera Platform exports them) keeps its own.
    """
    text = text.strip()
    if _is_missing(text):
        return None
    if _NUMBER.fullmatch(text):
        millis = _decimal(text)
        if millis > _MAX_EPOCH_MS:
            raise ValueError(f"timestamp out of range: {text!r}")
        return float(millis) / 1000
    if len(text) < 10 or text[4] != "-":
        raise ValueError(f"not a date: {text!r}")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date: {text!r}") from None
    if value.tzinfo is None and zone is not None:
        value = value.replace(tzinfo=zone)
    try:
        return value.timestamp()
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"date out of range: {text!r}") from None
