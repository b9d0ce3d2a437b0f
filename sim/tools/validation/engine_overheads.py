"""The serving-engine profiles' fitted parameters, fitted on a documented subset of the published rows.

What a serving engine adds to its kernels (host time per step, per sequence and per worker, a
per-request front-end time, the fp8 matmul path's achieved fraction of peak, the custom
all-reduce's peer-memory bandwidth: :class:`~sim.spec.engine.EngineProfile`) is not in the
kernel-level calibration data; it is identified by published serving measurements. Only the rows
marked ``role: fit`` in ``published_rows.yaml`` are fitted; every other row is predicted. Which
rows and which parameters (:data:`FITTED`):

* ``vllm``: ``step_overhead_us`` and ``step_overhead_us_per_tp_rank`` on the two vLLM CI rows
  (TP1 and TP4 on H200); the B200 TP4 row of another source is predicted;
* ``sglang``: ``step_overhead_us`` on the SGLang 8B decode row and ``p2p_link_efficiency`` on
  the 256 KB and 512 KB custom all-reduce rows of SGLang PR#2904 (whose kernel is TensorRT-LLM's;
  the 512 B and 32 KB rows, set by the documented software latency, are predicted);
* ``trtllm``: ``step_overhead_us``, ``request_overhead_us`` and
  ``low_precision_compute_efficiency`` on the NIM Llama-3.3-70B TP2 rows (ITL at five
  concurrencies, TTFT of two prompts) and the TensorRT-LLM v1.0 Llama-3.1-8B throughput rows;
  TensorRT-LLM v0.5 TTFT, its 70B throughput rows, MLPerf and the H200 blog row are predicted;
* ``hf_eager``: the speculative loop's host time per pass and per drafted level on the
  Spec-Bench Vicuna-7B rows (SpS, Medusa, Hydra, EAGLE); the Vicuna-13B rows are predicted.
  (A per-sequence host cost fitted too came out at 2 us and, fitted on NIM alone, mispredicted
  the 8B throughput rows by up to 57 %: the rows do not identify it, so it stays 0.)

The fit minimises squared log-ratios (relative errors) within physical bounds, starting from the
profile's YAML values, engines one after another. :func:`leave_one_source_out` refits without
each source of fitted rows in turn and predicts that source: the held-out error of a fitted row.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sim.config.parse import load_engine
from sim.tools.validation.published import Evaluator, engine_of

# Per engine profile, the parameters fitted on its published rows, with physical bounds.
FITTED: dict[str, dict[str, tuple[float, float]]] = {
    "vllm": {"step_overhead_us": (0.0, 20000.0), "step_overhead_us_per_tp_rank": (0.0, 5000.0)},
    "sglang": {"step_overhead_us": (0.0, 20000.0), "p2p_link_efficiency": (0.02, 1.0)},
    "trtllm": {"step_overhead_us": (0.0, 20000.0), "request_overhead_us": (0.0, 50000.0),
               "low_precision_compute_efficiency": (0.2, 1.0)},
    "hf_eager": {"speculative_pass_overhead_us": (0.0, 50000.0), "speculative_level_overhead_us": (0.0, 20000.0)},
}


#: the profile the serving engines build on (their YAML's ``defaults``): the fit's start
BASE = "optimized"
#: what each fitted profile builds on, where not :data:`BASE`
BASES = {"hf_eager": "pytorch_eager"}
#: start values that differ from the base profile's: ``optimized``'s 150 us per step was chosen
#: on the SGLang 8B row, so a fit (and a fold that leaves that row out) starts from none
START = {"step_overhead_us": 0.0}


def fit_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("role") == "fit"]


def fit_engines(rows: list[dict[str, Any]], maps: dict | None = None,
                without_origin: str | None = None) -> dict[str, dict[str, float]]:
    """Fitted values per engine, from the ``role: fit`` rows (less those of ``without_origin``).

    Every fit starts from the values of the profile the engine builds on (:data:`BASE`, :data:`BASES`) (never from the YAML it writes); an
    engine none of whose fitted rows remain keeps them (what is known without its rows)."""
    from scipy.optimize import least_squares

    maps = {} if maps is None else maps
    by_id = {r["id"]: r for r in rows}
    chosen = [r for r in fit_rows(rows) if r.get("origin") != without_origin]
    out: dict[str, dict[str, float]] = {}
    for engine, bounds in FITTED.items():
        mine = [r for r in chosen if engine_of(r["config"]) == engine]
        names = list(bounds)
        start = load_engine(BASES.get(engine, BASE))
        lo = np.array([bounds[p][0] for p in names])
        hi = np.array([bounds[p][1] for p in names])
        known = np.array([float(START.get(p, getattr(start, p))) for p in names])
        if not mine:
            out[engine] = dict(zip(names, map(float, known)))
            continue
        # the optimiser starts inside its bounds (at least 1 % of the range from the lower one)
        x0 = np.clip(np.maximum(known, lo + 0.01 * (hi - lo)), lo + 1e-9, hi - 1e-9)

        def residuals(x: np.ndarray, engine: str = engine, mine: list = mine, names: list = names) -> np.ndarray:
            ev = Evaluator({**out, engine: dict(zip(names, map(float, x)))}, maps)
            return np.array([np.log(ev.predict(r, by_id) / float(r["measured"])) for r in mine])

        sol = least_squares(residuals, x0, bounds=(lo, hi), x_scale="jac", diff_step=1e-3)
        out[engine] = dict(zip(names, map(float, sol.x)))
    return out


def leave_one_source_out(rows: list[dict[str, Any]], maps: dict | None = None) -> dict[str, float]:
    """Per fitted row, its prediction by a fit that never saw its source (``origin``)."""
    maps = {} if maps is None else maps
    by_id = {r["id"]: r for r in rows}
    held: dict[str, float] = {}
    for origin in sorted({r["origin"] for r in fit_rows(rows)}):
        ev = Evaluator(fit_engines(rows, maps, without_origin=origin), maps)
        for r in fit_rows(rows):
            if r["origin"] == origin:
                held[r["id"]] = ev.predict(r, by_id)
    return held
