"""Argument checks shared by the public functions: each raises ``ValueError`` naming the argument and
what was expected (bools are refused where a number is expected)."""
from __future__ import annotations

import math
import numbers


def _positive_float(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)) or not v > 0:
        raise ValueError(f"{name}: expected a positive finite number, got {v!r}")
    return float(v)


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return int(v)


def _choice(v, name: str, options) -> str:
    key = v.lower() if isinstance(v, str) else None
    if key not in options:
        raise ValueError(f"{name}: expected one of {list(options)}, got {v!r}")
    return key
