"""Kubernetes quantities for memory and CPU, parsed exactly and printed with binary suffixes.

Memory goes into pod specs, so what we print is always a Kubernetes quantity with a binary
suffix ("16Gi"). What we accept is anything a person or a scheduler writes: "16G", "16GB",
"16Gi", "16GiB", "500Mi", "1.5Gi", plain bytes as int or str, and the lower-case "k".
Decimal suffixes are powers of 1000 (as in Kubernetes), binary ones powers of 1024.

This is the parser of what people write (scalable.yaml, the CLI, the Python API). Values read
from Kubernetes objects (any ``resource.Quantity``, such as the VPA's ``1288490188800m``) are
parsed by the Kubernetes client's own parser in :mod:`scalable.controller.quantities`; this
module is the library core and never imports the Kubernetes client.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "QuantityError",
    "parse_memory",
    "format_memory",
    "parse_cpu",
    "format_cpu",
    "round_up_memory",
    "exact_memory",
    "resources_block",
]

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"k": 1, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_QUANTITY = re.compile(r"^\s*([+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")

MiB = 1024**2
GiB = 1024**3


class QuantityError(ValueError):
    """A quantity that cannot be read as memory or CPU."""


def parse_memory(value: str | int | float) -> int:
    """Bytes in ``value``, rounded up to a whole byte.

    >>> parse_memory("16Gi"), parse_memory("16G"), parse_memory("16GB"), parse_memory(1024)
    (17179869184, 16000000000, 16000000000, 1024)
    """
    if isinstance(value, bool):
        raise QuantityError(f"memory must be a quantity such as '16Gi', not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise QuantityError(f"memory must be a finite, non-negative number of bytes, not {value!r}")
        return int(math.ceil(value))
    match = _QUANTITY.match(str(value))
    if not match:
        raise QuantityError(
            f"cannot read {value!r} as memory: use a number with an optional suffix "
            "such as 512Mi, 16Gi, 16G, 16GB or plain bytes"
        )
    number_text, suffix = match.groups()
    try:
        number = Decimal(number_text)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise QuantityError(f"cannot read {value!r} as memory") from exc
    unit = suffix[:-1] if suffix.endswith("B") else suffix
    if unit == "":
        multiplier = Decimal(1)
    elif unit in _BINARY:
        multiplier = Decimal(1024) ** _BINARY[unit]
    elif unit in _DECIMAL:
        multiplier = Decimal(1000) ** _DECIMAL[unit]
    elif unit == "m":
        # what Kubernetes reads as thousandths of a byte, a person usually means as megabytes
        raise QuantityError(
            f"ambiguous memory {value!r}: 'm' is a thousandth of a byte in Kubernetes; write "
            f"{number_text}M or {number_text}Mi for megabytes"
        )
    else:
        raise QuantityError(
            f"unknown memory suffix {suffix!r} in {value!r}: use one of "
            "Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E (optionally followed by B), or plain bytes"
        )
    return int((number * multiplier).to_integral_value(rounding="ROUND_CEILING"))


def round_up_memory(num_bytes: float, granularity: int = MiB) -> int:
    """Round up to a multiple of ``granularity`` so that printed quantities stay exact."""
    if num_bytes <= 0:
        return 0
    return int(math.ceil(num_bytes / granularity) * granularity)


def format_memory(num_bytes: float) -> str:
    """A Kubernetes quantity with the largest binary suffix that keeps it exact and short.

    The value is first rounded up to whole MiB (or left in Ki for tiny values), so a
    recommendation never prints smaller than what it means.

    >>> format_memory(16 * 1024**3), format_memory(1536 * 1024**2), format_memory(1000)
    ('16Gi', '1536Mi', '1Ki')
    """
    if num_bytes <= 0:
        return "0"
    if num_bytes < MiB:
        return f"{int(math.ceil(num_bytes / 1024))}Ki"
    mib = int(math.ceil(num_bytes / MiB))
    for suffix, power in (("Ti", 2), ("Gi", 1)):
        unit = 1024**power
        if mib % unit == 0:
            return f"{mib // unit}{suffix}"
    return f"{mib}Mi"


def parse_cpu(value: str | int | float) -> float:
    """CPUs in ``value``: "2", 2, "500m", "1.5"."""
    if isinstance(value, bool):
        raise QuantityError(f"cpu must be a quantity such as '2' or '500m', not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise QuantityError(f"cpu must be a finite, non-negative number, not {value!r}")
        return float(value)
    text = str(value).strip()
    try:
        if text.endswith("m"):
            return float(Decimal(text[:-1]) / 1000)
        result = float(Decimal(text))
    except InvalidOperation as exc:
        raise QuantityError(f"cannot read {value!r} as cpu: use a number such as 2, 0.5 or 500m") from exc
    if result < 0:
        raise QuantityError(f"cpu must be non-negative, not {value!r}")
    return result


def format_cpu(cpus: float) -> str:
    """Whole CPUs as an integer string, fractions in millicores: 2 -> "2", 0.25 -> "250m"."""
    millis = int(math.ceil(round(cpus * 1000, 6)))
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


def exact_memory(num_bytes: int) -> str:
    """A quantity that means exactly ``num_bytes``: binary-suffixed when that is exact, else bytes
    (a bound such as 1500M is not a whole MiB, and a limit must not exceed it)."""
    text = format_memory(num_bytes)
    return text if parse_memory(text) == num_bytes else str(int(num_bytes))


def resources_block(cpus: float, memory_bytes: int) -> dict[str, dict[str, str]]:
    """A container's ``resources``: requests equal to limits, exactly ``memory_bytes``.

    The one builder of this block (the LearnedAdvisor's ``Recommendation.to_k8s``, the
    operator's sizing and the session's pods all use it). Limits equal requests: a memory limit
    above the request invites the OOM killer at the node's convenience, and equal requests and
    limits give the pod the Guaranteed QoS class, so long-running workers are evicted last.
    CPU is rounded up to whole millicores, the finest a pod spec says.
    """
    quantities = {"cpu": format_cpu(cpus), "memory": exact_memory(memory_bytes)}
    return {"requests": dict(quantities), "limits": dict(quantities)}
