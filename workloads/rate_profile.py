"""Time-varying demand: a rate profile that multiplies a workload's arrival rate over time.

A profile is a multiplier ``m(t) >= 0`` given at knots ``(time_s, multiplier)``, linear between
knots (two knots at the same time make a step), describing one cycle of ``period_s`` seconds (the
last knot's time) that repeats.

Modelling assumption: the profile is applied by an exact deterministic time change. With
``L(t) = integral_0^t m(u) du``, a request that arrives at ``s`` in the base workload (a trace's
recorded times, or a synthetic process) arrives at ``t = L^-1(s)``. A base process of rate
``lambda`` then has rate ``lambda * m(t)`` at ``t``: over an interval where ``m`` is 2, twice as many
arrivals per second; where ``m`` is 0, none. Every request is kept once, in order, with its
lengths and prefix blocks (thinning would drop requests where ``m < 1`` and need invented copies
where ``m > 1``); the run lasts as long as the profile needs to deliver the base workload's
requests. Burstiness at time scales shorter than the profile's knots is the base process's,
compressed or stretched with it. A cycle that averages 1 (``L(period) = period``) keeps the mean
rate of the base workload.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from workloads.errors import WorkloadError
from workloads.request_table import RequestTable

COLUMNS = ("time_s", "multiplier")
#: a segment narrower than this (seconds) is a step: its slope is not formed
STEP_S = 1e-9
#: the shortest cycle a profile may describe (seconds)
MIN_PERIOD_S = 1e-3


@dataclass(frozen=True, eq=False)
class RateProfile:
    """Knots of a piecewise-linear rate multiplier over one cycle (see the module docstring).

    ``time_s``: non-decreasing, first 0, last the cycle's length (> 0); ``multiplier``: finite,
    >= 0, with a positive integral over the cycle."""

    time_s: np.ndarray
    multiplier: np.ndarray
    source: str = "profile"

    def __post_init__(self) -> None:
        t = np.asarray(self.time_s, dtype=np.float64)
        m = np.asarray(self.multiplier, dtype=np.float64)
        where = self.source
        if t.ndim != 1 or t.shape != m.shape or t.size < 2:
            raise WorkloadError(f"{where}: a rate profile needs at least 2 rows of (time_s, multiplier)")
        bad = np.flatnonzero(~np.isfinite(t) | ~np.isfinite(m))
        if bad.size:
            i = int(bad[0])
            raise WorkloadError(f"{where} data row {i + 1}: time_s={float(t[i])!r}, multiplier={float(m[i])!r} must be finite numbers")
        if t[0] != 0.0:
            raise WorkloadError(f"{where} data row 1: time_s={float(t[0])!r} must be 0 (a profile starts at the run's start)")
        back = np.flatnonzero(np.diff(t) < 0)
        if back.size:
            i = int(back[0]) + 1
            raise WorkloadError(f"{where} data row {i + 1}: time_s={float(t[i])!r} is before the row above ({float(t[i - 1])!r}); "
                                "times must be non-decreasing")
        neg = np.flatnonzero(m < 0)
        if neg.size:
            i = int(neg[0])
            raise WorkloadError(f"{where} data row {i + 1}: multiplier={float(m[i])!r} must be >= 0")
        if t[-1] < MIN_PERIOD_S:
            raise WorkloadError(f"{where}: the last time_s={float(t[-1])!r} (the cycle's length) must be >= {MIN_PERIOD_S} s")
        object.__setattr__(self, "time_s", t)
        object.__setattr__(self, "multiplier", m)
        if self.cumulative[-1] <= 0:
            raise WorkloadError(f"{where}: the multiplier is 0 over the whole cycle; no request could arrive")

    @property
    def period_s(self) -> float:
        return float(self.time_s[-1])

    @cached_property
    def cumulative(self) -> np.ndarray:
        """``L`` at each knot (trapezoids: the multiplier is linear between knots)."""
        t, m = self.time_s, self.multiplier
        return np.concatenate(([0.0], np.cumsum(np.diff(t) * (m[:-1] + m[1:]) / 2.0)))

    def mean_multiplier(self) -> float:
        """The multiplier's average over one cycle."""
        return float(self.cumulative[-1] / self.period_s)

    def _segment(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Start time, width, start multiplier and slope of segments ``k`` (a step: slope 0)."""
        t0, m0 = self.time_s[k], self.multiplier[k]
        width = self.time_s[k + 1] - t0
        slope = np.divide(self.multiplier[k + 1] - m0, width, out=np.zeros_like(width), where=width > STEP_S)
        return t0, width, m0, slope

    def _in_cycle(self, t_s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whole cycles before ``t_s``, the time into the cycle, and the segment holding it
        (right-continuous at a step)."""
        t = np.asarray(t_s, dtype=np.float64)
        cycles = np.floor(t / self.period_s)
        r = t - cycles * self.period_s
        k = np.clip(np.searchsorted(self.time_s, r, side="right") - 1, 0, self.time_s.size - 2)
        return cycles, r, k

    def at(self, t_s: np.ndarray | float) -> np.ndarray:
        """The multiplier at times ``t_s`` (right-continuous at a step)."""
        _, r, k = self._in_cycle(t_s)
        t0, _, m0, slope = self._segment(k)
        return m0 + slope * (r - t0)

    def integral(self, t_s: np.ndarray | float) -> np.ndarray:
        """``L(t)``: base-workload seconds delivered by time ``t`` of the run."""
        cycles, r, k = self._in_cycle(t_s)
        t0, _, m0, slope = self._segment(k)
        x = r - t0
        return cycles * self.cumulative[-1] + self.cumulative[k] + m0 * x + 0.5 * slope * x * x

    def warp(self, base_s: np.ndarray) -> np.ndarray:
        """``L^-1``: the run time at which each base-workload time is reached (non-decreasing in, out)."""
        s = np.asarray(base_s, dtype=np.float64)
        cum = self.cumulative
        cycles = np.floor(s / cum[-1])
        r = s - cycles * cum[-1]
        # the segment in which L first reaches r (side=left: the earliest time, so warp(0) = 0
        # even where the multiplier starts at 0, and a stretch of no area is never entered)
        k = np.clip(np.searchsorted(cum, r, side="left") - 1, 0, cum.size - 2)
        t0, width, m0, slope = self._segment(k)
        need = r - cum[k]
        # m0 x + slope x^2 / 2 = need, in the form that is stable for any slope sign and m0 = 0
        root = np.sqrt(np.maximum(m0 * m0 + 2.0 * slope * need, 0.0))
        denom = m0 + root
        x = np.divide(2.0 * need, denom, out=np.zeros_like(r), where=denom > 0)
        return cycles * self.period_s + t0 + np.clip(x, 0.0, width)


#: Bundled profiles by name (``workload.rate_profile=diurnal``), under ``data/profiles/``: the
#: Azure LLM inference trace 2024's hourly arrival rates (see ``data/ATTRIBUTION.md``).
BUNDLED_PROFILES = {
    "diurnal": "diurnal_azure2024_conv.csv",        # conversation, mean day (t=0: 00:00 UTC)
    "weekly": "weekly_azure2024_conv.csv",          # conversation, the week (t=0: Sunday 00:00 UTC)
    "diurnal_code": "diurnal_azure2024_code.csv",   # code, mean day
    "weekly_code": "weekly_azure2024_code.csv",     # code, the week (t=0: Friday 00:00 UTC)
}
PROFILE_DIR = Path(__file__).resolve().parent / "data" / "profiles"


def read_rate_profile(path: str | Path) -> RateProfile:
    """A profile from a CSV file with the header ``time_s,multiplier`` (one row per knot), or
    a bundled one by name (:data:`BUNDLED_PROFILES`)."""
    p = PROFILE_DIR / BUNDLED_PROFILES[str(path)] if str(path) in BUNDLED_PROFILES else Path(path)
    if not p.is_file():
        raise WorkloadError(f"workload.rate_profile={str(path)!r}: no such file (or one of the bundled profiles "
                            f"{sorted(BUNDLED_PROFILES)})")
    times: list[float] = []
    mults: list[float] = []
    with p.open(newline="") as f:
        rows = csv.reader(f)
        header = [h.strip() for h in next(rows, [])]
        if tuple(header[:2]) != COLUMNS:
            raise WorkloadError(f"workload.rate_profile {p.name} line 1: header {','.join(header)!r} must start with 'time_s,multiplier'")
        for line, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            for name, text, out in ((COLUMNS[0], row[0] if row else "", times),
                                    (COLUMNS[1], row[1] if len(row) > 1 else "", mults)):
                try:
                    v = float(text)
                except ValueError:
                    raise WorkloadError(f"workload.rate_profile {p.name} line {line}: {name}={text!r} is not a number") from None
                if not math.isfinite(v):
                    raise WorkloadError(f"workload.rate_profile {p.name} line {line}: {name}={text!r} is not a finite number")
                out.append(v)
    return RateProfile(np.array(times), np.array(mults), source=f"workload.rate_profile {p.name}")


def apply_rate_profile(table: RequestTable, profile: RateProfile) -> RequestTable:
    """``table`` with its arrivals moved by the profile's time change (order, lengths kept)."""
    # the arrivals are sorted; rounding at a knot or a cycle's seam must not reverse two by an ulp
    warped = np.maximum.accumulate(profile.warp(table.arrival_s - table.arrival_s[0]))
    return replace(table, arrival_s=warped,
                   source=f"{table.source} x {profile.source}")
