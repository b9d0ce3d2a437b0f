"""Arrival-time samplers for synthetic workloads.

Modelling assumptions
---------------------
* Every sampler returns ``n`` float64 arrival times in seconds, non-decreasing, with the
  **first arrival at exactly 0.0**; the ``n - 1`` following inter-arrival gaps are
  independent and identically distributed (a renewal process observed from an arrival).
  This matches :class:`~workloads.request_table.RequestTable`, whose times are measured
  from the first request, so no information is lost by dropping a leading gap.
* Randomness comes only from the ``numpy.random.Generator`` passed in; nothing touches
  global random state, so equal generators give identical arrays.
* ``poisson_arrivals``: exponential gaps with mean ``1 / rate_per_s``.
* ``gamma_arrivals``: gamma gaps with mean ``1 / rate_per_s`` and coefficient of
  variation ``cv`` (shape ``1 / cv**2``, scale ``1 / (rate_per_s * shape)``); ``cv = 1``
  is Poisson, ``cv > 1`` is burstier, ``cv < 1`` more regular.
* ``onoff_arrivals``: an interrupted Poisson process -- Poisson at ``rate_on_per_s``
  during ON periods, nothing during OFF periods, with exponentially distributed ON and
  OFF durations.  It starts at the beginning of an ON period.  Its long-run mean rate is
  ``rate_on_per_s * mean_on_s / (mean_on_s + mean_off_s)``.
"""

from __future__ import annotations

import numpy as np

from workloads._checks import count_param, positive_real
from workloads.errors import WorkloadError

__all__ = ["gamma_arrivals", "onoff_arrivals", "poisson_arrivals"]


def _check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise WorkloadError(
            f"rng={rng!r} is not a numpy.random.Generator; pass e.g. numpy.random.default_rng(seed)"
        )
    return rng


def _from_gaps(gaps_s: np.ndarray) -> np.ndarray:
    arrivals = np.empty(gaps_s.size + 1, dtype=np.float64)
    arrivals[0] = 0.0
    np.cumsum(gaps_s, out=arrivals[1:])
    return arrivals


def poisson_arrivals(rng: np.random.Generator, rate_per_s: float, n: int) -> np.ndarray:
    """``n`` Poisson arrival times (seconds, first at 0.0) with mean rate ``rate_per_s``."""
    rng = _check_rng(rng)
    rate = positive_real("rate_per_s", rate_per_s)
    n = count_param("n", n)
    return _from_gaps(rng.exponential(1.0 / rate, size=n - 1))


def gamma_arrivals(rng: np.random.Generator, rate_per_s: float, cv: float, n: int) -> np.ndarray:
    """``n`` arrival times with gamma gaps of mean ``1 / rate_per_s`` and CV ``cv``."""
    rng = _check_rng(rng)
    rate = positive_real("rate_per_s", rate_per_s)
    cv = positive_real("cv", cv)
    n = count_param("n", n)
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    return _from_gaps(rng.gamma(shape, scale, size=n - 1))


def onoff_arrivals(
    rng: np.random.Generator,
    rate_on_per_s: float,
    mean_on_s: float,
    mean_off_s: float,
    n: int,
) -> np.ndarray:
    """``n`` arrival times of an interrupted Poisson process (see module docstring).

    Exact construction: arrivals are Poisson in *ON-time* (the clock that runs only while
    ON); ON-time is mapped to wall time by inserting the OFF periods that precede it.
    """
    rng = _check_rng(rng)
    rate = positive_real("rate_on_per_s", rate_on_per_s)
    mean_on = positive_real("mean_on_s", mean_on_s)
    mean_off = positive_real("mean_off_s", mean_off_s)
    n = count_param("n", n)
    on_time = _from_gaps(rng.exponential(1.0 / rate, size=n - 1))
    horizon = on_time[-1]
    on_ends: list[np.ndarray] = []
    offs: list[np.ndarray] = []
    total_on = 0.0
    batch = max(16, int(horizon / mean_on * 1.2) + 16)
    while True:
        on = rng.exponential(mean_on, size=batch)
        off = rng.exponential(mean_off, size=batch)
        ends = total_on + np.cumsum(on)
        on_ends.append(ends)
        offs.append(off)
        total_on = float(ends[-1])
        if total_on > horizon:
            break
    on_end = np.concatenate(on_ends)
    off_before = np.concatenate(([0.0], np.cumsum(np.concatenate(offs))[:-1]))
    # Index of the ON period containing each ON-time instant (period i spans
    # [on_end[i-1], on_end[i]) in ON-time); wall time adds the OFF periods before it.
    period = np.searchsorted(on_end, on_time, side="right")
    wall = on_time + off_before[period]
    return np.maximum.accumulate(wall)
