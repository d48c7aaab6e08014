"""Quantities read from Kubernetes objects, parsed by the Kubernetes client's own parser.

What the API server stores is any valid ``resource.Quantity``: ``1288490188800m`` of memory (as
the VPA writes it), ``1k`` cpus, ``1e3``, ``16Gi``. :func:`kubernetes.utils.parse_quantity`
reads exactly that grammar. :mod:`scalable.units` stays the parser of what people type
(``16GB``, ``2 GiB``), and refuses a memory in ``m``, which from a person usually means
megabytes; it is also the library core, which must not import the Kubernetes client, so the
operator's reading of API objects lives here. A value that is not a Kubernetes quantity but
reads as a person's unit (``16GB`` in a hand-written pod template) is still accepted.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from scalable import units
from scalable.units import QuantityError

__all__ = ["QuantityError", "quantity", "parse_memory", "parse_cpu"]


def quantity(value: Any) -> Decimal:
    """The exact value of a Kubernetes quantity (``QuantityError`` if it is not one)."""
    if isinstance(value, bool) or value is None:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity")
    if isinstance(value, float) and not math.isfinite(value):
        raise QuantityError(f"{value!r} is not a Kubernetes quantity")
    try:
        number = Decimal(parse_quantity(value))
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity: {exc}") from None
    if number < 0:
        raise QuantityError(f"{value!r} is negative")
    return number


def parse_memory(value: Any) -> int:
    """Bytes in a memory quantity of a Kubernetes object, rounded up to a whole byte."""
    try:
        return int(quantity(value).to_integral_value(rounding=ROUND_CEILING))
    except QuantityError:
        return units.parse_memory(value)


def parse_cpu(value: Any) -> float:
    """CPUs in a cpu quantity of a Kubernetes object: ``500m`` -> 0.5, ``1k`` -> 1000."""
    try:
        return float(quantity(value))
    except QuantityError:
        return units.parse_cpu(value)
