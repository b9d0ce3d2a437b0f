"""Bands on a configuration's headline numbers: calibration parameter uncertainty and traffic.

Draw ``k`` (1..n) simulates the configuration again with

* the engine parameters the step-time calibration fits (``hbm_efficiency``,
  ``compute_efficiency``, ``low_precision_compute_efficiency``, ``roofline_sharpness``,
  ``kernel_overhead_us``) multiplied by row ``k`` of the calibration's bootstrap factors
  (``sim/tools/calibration/h100_engine_draws.yaml``: 40 refits of the H100 step-time fit on cluster
  bootstraps of its measurements, written by ``python -m sim.calibrate uncertainty=40``), kept
  within the fit's bounds. Modelling assumption: the *relative* spread of that fit carries over
  to the engine and hardware the run uses (the factors are not refitted per engine or GPU);
* the traffic redrawn: a trace's request lengths drawn with replacement at the same arrival
  times (``workload.resample`` with seed ``k``), a synthetic workload drawn anew (seed ``k``).

Both move in every draw, so the band covers both; a draw is one more discrete-event run. The
band is the ``low``-th to ``high``-th percentile over the draws (linear interpolation).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from sim.errors import ConfigError, require

DRAWS_FILE = Path(__file__).resolve().parent / "calibration" / "h100_engine_draws.yaml"


@dataclass(frozen=True)
class UncertaintyConfig:
    """``uncertainty.*`` of ``sim.procure`` (``draws=0``: no bands)."""

    draws: int = 8
    low_percentile: float = 10.0
    high_percentile: float = 90.0
    calibration: bool = True        # move the engine parameters by the calibration's bootstrap
    traffic: bool = True            # redraw the traffic

    def __post_init__(self) -> None:
        require(isinstance(self.draws, int) and not isinstance(self.draws, bool) and self.draws >= 0,
                f"uncertainty.draws={self.draws!r} must be an integer >= 0")
        for f in ("low_percentile", "high_percentile"):
            v = getattr(self, f)
            require(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100,
                    f"uncertainty.{f}={v!r} must be a number in [0, 100]")
        require(self.low_percentile < self.high_percentile,
                f"uncertainty.low_percentile={self.low_percentile} must be below high_percentile={self.high_percentile}")
        for f in ("calibration", "traffic"):
            require(isinstance(getattr(self, f), bool), f"uncertainty.{f}={getattr(self, f)!r} must be true or false")
        require(self.draws == 0 or self.calibration or self.traffic,
                "uncertainty.calibration and uncertainty.traffic are both false: nothing to draw")

    @staticmethod
    def from_map(values: dict[str, Any] | None) -> "UncertaintyConfig":
        values = dict(values or {})
        allowed = ("draws", "low_percentile", "high_percentile", "calibration", "traffic")
        unknown = sorted(set(values) - set(allowed))
        require(not unknown, f"uncertainty has unknown field(s) {unknown}; allowed: {list(allowed)}")
        return UncertaintyConfig(**values)


def load_factors(path: Path = DRAWS_FILE) -> tuple[tuple[str, ...], list[list[float]]]:
    """(engine parameters, one row of factors per bootstrap refit) from a draws file."""
    data = yaml.safe_load(Path(path).read_text())
    names = tuple(data["params"])
    factors = [[float(v) for v in row] for row in data["factors"]]
    if not factors or any(len(row) != len(names) for row in factors):
        raise ConfigError(f"{path}: every row of factors needs one value per parameter {list(names)}")
    return names, factors


def drawn_config(cfg: dict[str, Any], k: int, names: tuple[str, ...], factors: list[list[float]],
                 ucfg: UncertaintyConfig) -> dict[str, Any]:
    """Draw ``k`` (1-based) of a run config: engine parameters x factors row ``k`` (cycling
    through the rows), traffic redrawn with seed ``k``."""
    from sim.tools.calibration.engine_fit import FIT_BOUNDS

    out = copy.deepcopy(cfg)
    if ucfg.calibration:
        engine = dict(out["engine"])
        for name, f in zip(names, factors[(k - 1) % len(factors)]):
            if engine.get(name) is None:
                continue
            lo, hi = FIT_BOUNDS[name]
            engine[name] = float(min(hi, max(lo, engine[name] * f)))
        out["engine"] = engine
    if ucfg.traffic:
        out["workload"] = {**out["workload"], "resample": True}
        out["seed"] = int(out.get("seed", 0)) + k
    return out


def band(values: Sequence[float | None], low: float, high: float) -> dict[str, float | None]:
    """``low``-th, median and ``high``-th percentile of the values given (None where none)."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return {"low": None, "median": None, "high": None}
    return {"low": float(np.percentile(v, low)), "median": float(np.median(v)), "high": float(np.percentile(v, high))}


def draw_bands(cfg: dict[str, Any], measure: Callable[[dict[str, Any]], dict[str, Any]], ucfg: UncertaintyConfig,
               path: Path = DRAWS_FILE) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Simulate ``ucfg.draws`` draws of ``cfg``; ``measure(config)`` gives each draw's metrics
    (numbers, and booleans such as ``meets_slo``). Returns one row per draw and, per metric,
    its band (numbers) or the fraction of draws where it holds (booleans)."""
    names, factors = load_factors(path)
    rows = []
    for k in range(1, ucfg.draws + 1):
        drawn = drawn_config(cfg, k, names, factors, ucfg)
        row: dict[str, Any] = {"draw": k, "seed": drawn.get("seed", 0)}
        if ucfg.calibration:
            row.update({f"factor_{n}": f for n, f in zip(names, factors[(k - 1) % len(factors)])})
        row.update(measure(drawn))
        rows.append(row)
    bands: dict[str, Any] = {"draws": ucfg.draws, "percentiles": [ucfg.low_percentile, ucfg.high_percentile],
                             "calibration": ucfg.calibration, "traffic": ucfg.traffic}
    metrics = [k for k in rows[0] if k not in ("draw", "seed") and not k.startswith("factor_")] if rows else []
    for m in metrics:
        vals = [r[m] for r in rows]
        if all(isinstance(v, bool) for v in vals):
            bands[f"{m}_fraction"] = sum(vals) / len(vals)
        else:
            bands[m] = band(vals, ucfg.low_percentile, ucfg.high_percentile)
    return rows, bands


def draw_overrides(cfg: dict[str, Any], k: int, ucfg: UncertaintyConfig,
                   path: Path = DRAWS_FILE) -> dict[str, Any]:
    """Draw ``k`` of the composed run config ``cfg`` as command-line overrides (what a sweep of
    ``python -m sim`` runs takes): the moved engine parameters, ``workload.resample`` and ``seed``."""
    names, factors = load_factors(path)
    drawn = drawn_config(cfg, k, names, factors, ucfg)
    out: dict[str, Any] = {f"engine.{n}": round(drawn["engine"][n], 6) for n in names
                           if drawn["engine"].get(n) is not None and drawn["engine"][n] != cfg["engine"].get(n)}
    if ucfg.traffic:
        out.update({"workload.resample": "true", "seed": drawn["seed"]})
    return out
