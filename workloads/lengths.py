"""Token-length distributions for synthetic prompts and outputs.

A *length spec* is either an integer (every request has that length) or a mapping with a
``dist`` key and that distribution's parameters, plus optional integer clamps ``min`` and
``max`` applied after sampling:

=============  ==========================  =========================================
``dist``       parameters                  sampled length
=============  ==========================  =========================================
fixed          ``value``                   ``value``
uniform        ``low``, ``high``           integer uniform on ``low..high`` inclusive
lognormal      ``median``, ``sigma``       ``round(median * exp(sigma * Z))``, Z ~ N(0,1)
exponential    ``mean`` (>= 1)             geometric on 1, 2, ... with mean ``mean``
choice         ``values``, ``weights``?    one of ``values`` (weights normalised)
quantiles      ``p``, ``values``           ``round(Q(U))``, U ~ U(0,1), Q the piecewise-linear
                                           quantile function through the knots
                                           (``p[i]``, ``values[i]``)
=============  ==========================  =========================================

Modelling assumptions
---------------------
* Lengths are integer token counts and always ``>= 1`` (a request prefills at least one
  token and generates at least one); continuous samples are rounded to the nearest
  integer and then raised to 1 if needed, before the ``min``/``max`` clamps.
* "exponential" is the discrete memoryless distribution -- geometric with success
  probability ``1 / mean`` on ``{1, 2, ...}`` -- so the mean is exactly ``mean`` and no
  zero lengths are produced.
* Lognormal samples are capped at ``2**53`` before conversion so that extreme ``sigma``
  cannot overflow int64; use ``max`` for a realistic context limit.
* "quantiles" is a distribution known only by some of its percentiles (what benchmark logs
  publish: p50, p90, p99, ...): the quantile function is linear between the knots, so its
  mean is the trapezoid integral of the knots. ``p`` must run from 0 to 1 in increasing
  order and ``values`` must not decrease (a quantile function cannot).
* Unknown keys in a spec are errors (they are almost always typos).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from workloads._checks import count_param
from workloads.errors import WorkloadError

__all__ = ["LENGTH_DISTRIBUTIONS", "quantiles_mean", "sample_lengths"]

LENGTH_DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # dist: (required parameters, optional parameters)
    "fixed": (("value",), ()),
    "uniform": (("low", "high"), ()),
    "lognormal": (("median", "sigma"), ()),
    "exponential": (("mean",), ()),
    "choice": (("values",), ("weights",)),
    "quantiles": (("p", "values"), ()),
}
_CLAMPS = ("min", "max")
_FLOAT_CAP = float(2**53)


def _int_param(field: str, key: str, value: object) -> int:
    return count_param(f"{field}.{key}", value)


def _real_param(field: str, key: str, value: object, *, minimum: float, strict: bool) -> float:
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise WorkloadError(f"{field}.{key}={value!r} is not a number; must be a finite number {bound}")
    f = float(value)
    if not math.isfinite(f) or f < minimum or (strict and f == minimum):
        raise WorkloadError(f"{field}.{key}={value!r} is out of range; must be a finite number {bound}")
    return f


def _sample_dist(rng: np.random.Generator, field: str, dist: str, spec: Mapping, n: int) -> np.ndarray:
    if dist == "fixed":
        return np.full(n, _int_param(field, "value", spec["value"]), dtype=np.int64)
    if dist == "uniform":
        low = _int_param(field, "low", spec["low"])
        high = _int_param(field, "high", spec["high"])
        if high < low:
            raise WorkloadError(f"{field}.high={high} is below {field}.low={low}; must be high >= low")
        return rng.integers(low, high, size=n, endpoint=True, dtype=np.int64)
    if dist == "lognormal":
        median = _real_param(field, "median", spec["median"], minimum=0.0, strict=True)
        sigma = _real_param(field, "sigma", spec["sigma"], minimum=0.0, strict=False)
        samples = rng.lognormal(mean=math.log(median), sigma=sigma, size=n)
        return np.clip(np.rint(samples), 1.0, _FLOAT_CAP).astype(np.int64)
    if dist == "exponential":
        mean = _real_param(field, "mean", spec["mean"], minimum=1.0, strict=False)
        return rng.geometric(1.0 / mean, size=n).astype(np.int64)
    if dist == "choice":
        values = spec["values"]
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise WorkloadError(f"{field}.values={values!r} is not a non-empty list of integers >= 1")
        choices = np.array([_int_param(field, f"values[{i}]", v) for i, v in enumerate(values)], dtype=np.int64)
        weights = spec.get("weights")
        if weights is None:
            return rng.choice(choices, size=n)
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != len(choices):
            raise WorkloadError(
                f"{field}.weights={weights!r} is not a list of {len(choices)} weights (one per value)"
            )
        w = np.array(
            [_real_param(field, f"weights[{i}]", x, minimum=0.0, strict=False) for i, x in enumerate(weights)]
        )
        if w.sum() <= 0:
            raise WorkloadError(f"{field}.weights={weights!r} sum to 0; at least one weight must be > 0")
        return rng.choice(choices, size=n, p=w / w.sum())
    if dist == "quantiles":
        p, v = _quantile_knots(field, spec["p"], spec["values"])
        return np.clip(np.rint(np.interp(rng.random(n), p, v)), 1.0, _FLOAT_CAP).astype(np.int64)
    raise AssertionError(dist)  # unreachable: dist validated by the caller


def _quantile_knots(field: str, p: object, values: object) -> tuple[np.ndarray, np.ndarray]:
    """The (probability, length) knots of a ``quantiles`` spec, checked."""
    def numbers_list(key: str, x: object, minimum: float) -> np.ndarray:
        if isinstance(x, (str, bytes)) or not isinstance(x, Sequence) or len(x) < 2:
            raise WorkloadError(f"{field}.{key}={x!r} is not a list of at least 2 numbers")
        return np.array([_real_param(field, f"{key}[{i}]", e, minimum=minimum, strict=False)
                         for i, e in enumerate(x)])
    pa, va = numbers_list("p", p, 0.0), numbers_list("values", values, 1.0)
    if len(pa) != len(va):
        raise WorkloadError(f"{field}.p has {len(pa)} knots and {field}.values {len(va)}; "
                            "they must pair up (one length per probability)")
    if pa[0] != 0.0 or pa[-1] != 1.0 or np.any(np.diff(pa) <= 0):
        raise WorkloadError(f"{field}.p={pa.tolist()!r} must rise strictly from 0 to 1")
    if np.any(np.diff(va) < 0):
        raise WorkloadError(f"{field}.values={va.tolist()!r} must not decrease (they are quantiles)")
    return pa, va


def quantiles_mean(p: Sequence[float], values: Sequence[float]) -> float:
    """Mean of the ``quantiles`` distribution through these knots (before rounding): the
    integral of its piecewise-linear quantile function."""
    pa, va = np.asarray(p, dtype=float), np.asarray(values, dtype=float)
    return float(np.sum(np.diff(pa) * (va[1:] + va[:-1]) / 2.0))


def sample_lengths(rng: np.random.Generator, spec: int | Mapping, n: int, field_name: str) -> np.ndarray:
    """Draw ``n`` token lengths (int64, all ``>= 1``) from ``spec``.

    ``field_name`` (e.g. ``"prompt_tokens"``) only labels error messages.
    """
    if not isinstance(rng, np.random.Generator):
        raise WorkloadError(f"rng={rng!r} is not a numpy.random.Generator; pass e.g. numpy.random.default_rng(seed)")
    n = count_param("n", n)
    allowed_dists = sorted(LENGTH_DISTRIBUTIONS)
    if not isinstance(spec, Mapping):
        if isinstance(spec, bool) or not isinstance(spec, numbers.Integral):
            raise WorkloadError(
                f"{field_name}={spec!r} is not a length spec; must be an integer >= 1 or a mapping "
                f"with dist in {allowed_dists}"
            )
        return np.full(n, count_param(field_name, spec), dtype=np.int64)

    dist = spec.get("dist")
    if dist not in LENGTH_DISTRIBUTIONS:
        raise WorkloadError(f"{field_name}.dist={dist!r} is not a length distribution; allowed: {allowed_dists}")
    required, optional = LENGTH_DISTRIBUTIONS[dist]
    allowed_keys = {"dist", *required, *optional, *_CLAMPS}
    for key in spec:
        if key not in allowed_keys:
            raise WorkloadError(
                f"{field_name}.{key} is not a parameter of dist={dist!r}; allowed: {sorted(allowed_keys)}"
            )
    for key in required:
        if key not in spec:
            raise WorkloadError(f"{field_name}.{key} is missing; dist={dist!r} requires {list(required)}")

    lo = _int_param(field_name, "min", spec["min"]) if spec.get("min") is not None else None
    hi = _int_param(field_name, "max", spec["max"]) if spec.get("max") is not None else None
    if lo is not None and hi is not None and hi < lo:
        raise WorkloadError(f"{field_name}.max={hi} is below {field_name}.min={lo}; must be max >= min")

    lengths = _sample_dist(rng, field_name, dist, spec, n)
    if lo is not None or hi is not None:
        lengths = np.clip(lengths, lo if lo is not None else 1, hi)
    return np.maximum(lengths, 1).astype(np.int64, copy=False)
