"""Small parameter checks shared by the samplers (internal)."""

from __future__ import annotations

import math
import numbers

from workloads.errors import WorkloadError


def count_param(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` as an int ``>= minimum`` or raise a one-line WorkloadError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            f = float(value)
            if math.isfinite(f) and f.is_integer() and f >= minimum:
                return int(f)
        raise WorkloadError(f"{name}={value!r} is not an integer; must be an integer >= {minimum}")
    if int(value) < minimum:
        raise WorkloadError(f"{name}={value!r} is too small; must be an integer >= {minimum}")
    return int(value)


def positive_real(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float ``> 0`` (or ``>= 0``) or raise WorkloadError."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise WorkloadError(f"{name}={value!r} is not a number; must be a finite number {bound}")
    f = float(value)
    if not math.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
        raise WorkloadError(f"{name}={value!r} is out of range; must be a finite number {bound}")
    return f
