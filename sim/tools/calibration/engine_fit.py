"""Fit an engine profile to measured step times (the JSONL format of ``shared/calibration``).

The fit adjusts only engine parameters (achieved fractions of datasheet bandwidth and
FLOP/s, roofline sharpness, per-kernel and per-step overhead; the attention-kernel and
elementwise-traffic parameters and the per-step overhead can be fitted too but by default stay
at documented values); the hardware stays at its datasheet values, so the fitted profile can be
moved to another GPU by changing only the hardware preset. Residuals are log-ratios
(relative errors), so small and large steps weigh equally. Eager-mode rows fit one more
parameter, the host's per-kernel launch time, on top of the graph-mode profile.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sim.cost.step_time import StepTimePredictor, soft_roofline
from sim.errors import ConfigError
from sim.spec.batch import BatchShape
from sim.spec.engine import EngineProfile
from sim.spec.hardware import HardwareSpec
from sim.spec.model import ModelSpec
from sim.spec.precision import WEIGHT_FORMATS, Precision

# Engine parameters the graph-mode fit adjusts, with physical bounds.
FIT_BOUNDS: dict[str, tuple[float, float]] = {
    "hbm_efficiency": (0.2, 1.0),
    "compute_efficiency": (0.2, 1.0),
    "low_precision_compute_efficiency": (0.2, 1.0),
    "attention_compute_efficiency": (0.05, 1.0),
    "roofline_sharpness": (1.0, 12.0),
    "kernel_overhead_us": (0.1, 20.0),
    "attention_ctas_per_sm": (0.05, 64.0),
    "elementwise_bytes_per_hidden": (0.0, 400.0),
    "elementwise_bytes_per_qk": (0.0, 100.0),
    "elementwise_bytes_per_ffn": (0.0, 100.0),
    "step_overhead_us": (0.0, 2000.0),
}

# What the fit adjusts by default: the parameters whole-step measurements identify. The rest
# stay at documented values (DOCUMENTED_DEFAULTS) unless asked for
# (``fit_engine(params=FIT_BOUNDS)``): fitted too, they moved by 5-13 % (the per-step overhead
# from 0 to 72 us) when one model's rows were left out, i.e. the data do not pin them down.
DOCUMENTED_DEFAULTS: dict[str, Any] = {
    # A measured step is one forward pass timed around its CUDA-graph replay (or its eager
    # launches): no scheduler, sampling or detokenization runs between steps, so the per-step
    # cost is only the kernel boundaries of the embedding, final norm, LM head and argmax.
    "step_overhead_us": 0.0,
    # FlashAttention-2 (what PyTorch SDPA runs) reaches about 35 % of H100 bf16 peak
    # (FlashAttention-3 paper, Shah et al. 2024, abstract); decode-attention kernels need about
    # 2 resident thread blocks per SM to saturate HBM.
    "attention_compute_efficiency": 0.35,
    "attention_ctas_per_sm": 2.0,
    # Elementwise traffic of the measured engine, counted from its kernel list
    # (shared/calibration/README.md), bytes per token and layer:
    # two RMSNorms in fp32 (to fp32: read 2 write 4; square: 4+4; mean: 4; scale: 4+4;
    # to bf16: 4+2; weight: 2+2 -> 36 each) and two residual adds (2+2 read, 2 write -> 6
    # each): 84 per hidden unit; two rotary-like passes over q and k (read 2, write 2 each): 8
    # per q/k column; SiLU (read 2, write 2) and multiply (read 4, write 2): 10 per MLP column.
    "elementwise_bytes_per_hidden": 84.0,
    "elementwise_bytes_per_qk": 8.0,
    "elementwise_bytes_per_ffn": 10.0,
}
FIT_PARAMS: tuple[str, ...] = tuple(p for p in FIT_BOUNDS if p not in DOCUMENTED_DEFAULTS)

@dataclass(frozen=True)
class Measurement:
    """One measured row: a step (decode/prefill) of a model, or one matmul of the sweep."""

    kind: str
    measured_s: float
    mode: str
    model: ModelSpec | None = None
    batch: BatchShape | None = None
    mnk: tuple[int, int, int] | None = None
    label: str = ""
    dtype: str = "bf16"
    weights: str = "bf16"       # the step's weight format (a ``step`` row may give fp8 etc.)
    family: str = ""            # shape family (:func:`shape_family`)


#: Shape families the validation holds out one at a time (:func:`shape_family`).
FAMILIES = ("decode", "long_context", "big_batch", "prefill", "mixed", "gemm")


def shape_family(kind: str, batch: BatchShape | None, sizes: tuple[int, int, int] = (1, 0, 0)) -> str:
    """Which family a measured row belongs to: ``gemm`` (matmul sweep), ``mixed`` (a step
    with both prompt tokens and decodes), ``prefill`` (prompts only, batched or not),
    ``long_context`` (decode at >= 8,192 cached tokens per sequence), ``big_batch`` (decode of
    >= 64 sequences), ``decode`` (the rest). ``sizes``: (sequences, mean context, prompt tokens)."""
    if kind == "gemm_sweep":
        return "gemm"
    seqs, context, prompt_tokens = sizes
    if kind == "prefill" or (prompt_tokens and prompt_tokens == (batch.new_tokens if batch is not None else 0)):
        return "prefill"
    if prompt_tokens:
        return "mixed"
    if context >= 8192:
        return "long_context"
    if seqs >= 64:
        return "big_batch"
    return "decode"


def _step_row(r: dict[str, Any], p: Path, lineno: int) -> tuple[BatchShape, str, tuple[int, int, int]]:
    """A ``step`` row's batch, label suffix and family sizes: ``sequences`` of
    ``{context_len, new_tokens[, sampled]}`` as ``python -m sim.steptime`` takes them
    (``sampled``: positions with logits, default 1; a sequence adding several tokens with at
    most one sampled is a prompt chunk, one sampling all of them a verification pass)."""
    seqs = r["sequences"]
    if not isinstance(seqs, list) or not seqs:
        raise ConfigError(f"{p.name} line {lineno}: step row needs a non-empty sequences list")
    ctx, new, sampled = [], [], []
    for i, q in enumerate(seqs):
        if not isinstance(q, dict) or not isinstance(q.get("new_tokens"), int) or q["new_tokens"] < 1 \
                or not isinstance(q.get("context_len", 0), int) or q.get("context_len", 0) < 0:
            raise ConfigError(f"{p.name} line {lineno}: sequences[{i}]={q!r} needs integers context_len >= 0 "
                              f"and new_tokens >= 1")
        smp = q.get("sampled", 1)
        if isinstance(smp, bool) or not isinstance(smp, int) or not 0 <= smp <= q["new_tokens"]:
            raise ConfigError(f"{p.name} line {lineno}: sequences[{i}].sampled={smp!r} must be an integer from 0 "
                              f"to new_tokens")
        ctx.append(int(q.get("context_len", 0)))
        new.append(int(q["new_tokens"]))
        sampled.append(smp)
    # a decode (or verification pass) computes logits at every new position; a prompt chunk at
    # most at its last one (a one-token chunk with sampled 0 is still a chunk)
    decoding = [k == n and k >= 1 for n, k in zip(new, sampled)]
    prompt = sum(n for n, d in zip(new, decoding) if not d)
    decodes = sum(decoding)
    batch = BatchShape.from_sequences(ctx, new, sampled)
    label = f"step {len(seqs)} seqs ({prompt} prompt tokens, {decodes} decodes)"
    mean_ctx = int(sum(c for c, d in zip(ctx, decoding) if d) / decodes) if decodes else 0
    return batch, label, (len(seqs), mean_ctx, prompt)


def read_measurements(path: str | Path) -> list[Measurement]:
    """Parse a calibration JSONL file (rows of kind model, decode, prefill, gemm_sweep)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data={str(path)!r}: no such file")
    models: dict[str, ModelSpec] = {}
    rows: list[Measurement] = []
    try:
        text = p.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"data={str(path)!r}: not a text file (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start}); a JSON-lines file from kit/ was expected") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p.name} line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(r, dict):
            raise ConfigError(f"{p.name} line {lineno}: {line.strip()[:40]!r} is not a JSON object")
        kind = r.get("kind")
        ms = r.get("ms")
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 0):
            raise ConfigError(f"{p.name} line {lineno}: ms={ms!r} must be a time > 0 (milliseconds)")
        try:
            if kind == "model":
                untied = r["L"] * 0 + r["vocab"] * r["h"]
                shape = dict(hidden_size=r["h"], num_hidden_layers=r["L"], num_attention_heads=r["nh"],
                             num_key_value_heads=r["nkv"], head_dim=r["hd"], intermediate_size=r["ffn"],
                             vocab_size=r["vocab"])
                probe = ModelSpec(name=r["model"], **shape)
                tied = abs(probe.params - untied - r["params"]) < abs(probe.params - r["params"])
                models[r["model"]] = ModelSpec(name=r["model"], tie_word_embeddings=tied, **shape)
            elif kind in ("decode", "prefill", "step") and "ms" in r:
                model = models[r["model"]]
                weights = str(r.get("weights", "bf16"))
                if weights not in WEIGHT_FORMATS:
                    raise ConfigError(f"{p.name} line {lineno}: weights={weights!r} is not one of {list(WEIGHT_FORMATS)}")
                mode = r.get("mode", "graph")
                if kind == "decode":
                    batch = BatchShape.decode(int(r["B"]), int(r["S"]), int(r.get("T", 1)))
                    label = f"{r['model']} decode B={r['B']} S={r['S']} T={r.get('T', 1)} {mode}"
                    sizes = (int(r["B"]), int(r["S"]), 0)
                elif kind == "prefill":
                    batch = BatchShape.prefill(int(r["P"]), int(r.get("B", 1)))
                    label = f"{r['model']} prefill P={r['P']} {mode}"
                    sizes = (int(r.get("B", 1)), 0, int(r["P"]) * int(r.get("B", 1)))
                else:
                    batch, what, sizes = _step_row(r, p, lineno)
                    label = f"{r['model']} {what} {mode}"
                if weights != "bf16":
                    label += f" {weights}"
                rows.append(Measurement(kind, r["ms"] * 1e-3, mode, model, batch, label=label, weights=weights,
                                        family=shape_family(kind, batch, sizes)))
            elif kind == "gemm_sweep":
                rows.append(Measurement(kind, r["ms"] * 1e-3, "graph", mnk=(r["M"], r["K"], r["N"]),
                                        label=f"gemm M={r['M']} K={r['K']} N={r['N']}", family="gemm"))
            elif kind == "gemm_peak":
                n, dtype = int(r["mnk"]), str(r.get("dtype", "bf16"))
                if dtype not in WEIGHT_FORMATS:
                    raise ConfigError(f"{p.name} line {lineno}: gemm_peak dtype={dtype!r} is not one of {list(WEIGHT_FORMATS)}")
                rows.append(Measurement("gemm_sweep", r["ms"] * 1e-3, "graph", mnk=(n, n, n), dtype=dtype,
                                        label=f"gemm {dtype} M=K=N={n}", family="gemm"))
        except KeyError as exc:
            raise ConfigError(f"{p.name} line {lineno}: {kind} row lacks field {exc}") from None
    if not rows:
        raise ConfigError(f"data={str(path)!r}: no decode, prefill, step or gemm_sweep rows")
    return rows


def predict(row: Measurement, hardware: HardwareSpec, engine: EngineProfile,
            precision: Precision = Precision()) -> float:
    """Predicted seconds for one measured row on one GPU."""
    if row.kind == "gemm_sweep":
        m, k, n = row.mnk  # type: ignore[misc]
        precision = Precision(weights=row.dtype, activations="bf16")
        fmt = precision.compute_format
        t_c = 2.0 * m * k * n / (hardware.peak_flops(fmt) * engine.matmul_efficiency(fmt))
        t_m = (k * n * precision.weight_bytes + m * (k + n) * precision.activation_bytes) / (
            hardware.hbm_bandwidth_Bps * engine.hbm_efficiency)
        c, mm = soft_roofline(t_c, t_m, engine.roofline_sharpness)
        return c + mm + engine.kernel_overhead_us * 1e-6
    if row.weights != precision.weights:
        precision = replace(precision, weights=row.weights)
    predictor = StepTimePredictor(row.model, hardware, engine, precision)  # type: ignore[arg-type]
    return predictor.stage(row.batch).total_s  # type: ignore[arg-type]


@dataclass(frozen=True)
class FitResult:
    engine: EngineProfile
    rows: list[dict[str, Any]]

    @property
    def median_abs_error(self) -> float:
        return float(np.median([abs(r["error"]) for r in self.rows]))


def _errors(rows: Iterable[Measurement], hardware: HardwareSpec, engine: EngineProfile) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        pred = predict(r, hardware, engine)
        out.append({"label": r.label, "kind": r.kind, "mode": r.mode, "measured_s": r.measured_s,
                     "predicted_s": pred, "error": pred / r.measured_s - 1.0})
    return out


def fit_engine(rows: list[Measurement], hardware: HardwareSpec, start: EngineProfile,
               params: Iterable[str] = FIT_PARAMS) -> FitResult:
    """Least-squares fit of graph-mode parameters, then of ``host_launch_us`` on eager rows."""
    from scipy.optimize import least_squares

    graph = [r for r in rows if r.mode == "graph"]
    low = any(r.kind == "gemm_sweep" and Precision(weights=r.dtype).compute_format != "bf16" for r in graph)
    params = [p for p in params if low or p != "low_precision_compute_efficiency"]
    if "low_precision_compute_efficiency" in params and start.low_precision_compute_efficiency is None:
        start = replace(start, low_precision_compute_efficiency=start.compute_efficiency)
    eager = [r for r in rows if r.mode == "eager"]
    lo = np.array([FIT_BOUNDS[p][0] for p in params])
    hi = np.array([FIT_BOUNDS[p][1] for p in params])
    x0 = np.clip(np.array([float(getattr(start, p)) for p in params]), lo + 1e-9, hi - 1e-9)

    def make(x: np.ndarray) -> EngineProfile:
        fitted: dict[str, Any] = {p: float(v) for p, v in zip(params, x)}
        return replace(start, cuda_graphs=True, **fitted)

    def residuals(x: np.ndarray) -> np.ndarray:
        eng = make(x)
        return np.array([np.log(predict(r, hardware, eng) / r.measured_s) for r in graph])

    sol = least_squares(residuals, x0, bounds=(lo, hi), x_scale="jac")
    engine = make(sol.x)
    if eager:
        def eager_res(x: np.ndarray) -> np.ndarray:
            eng = replace(engine, cuda_graphs=False, host_launch_us=float(x[0]))
            return np.array([np.log(predict(r, hardware, eng) / r.measured_s) for r in eager])

        sol_e = least_squares(eager_res, np.array([10.0]), bounds=([0.0], [200.0]))
        engine = replace(engine, host_launch_us=float(sol_e.x[0]))
    result_rows = _errors(graph, hardware, engine) + _errors(
        eager, hardware, replace(engine, cuda_graphs=False))
    return FitResult(engine, result_rows)


def profile_yaml(engine: EngineProfile, description: str, fitted_from: str) -> str:
    """A conf/engine YAML for ``engine`` (values rounded to 4 significant digits)."""
    lines = [f"# {description}", f"# Fitted by `python -m sim.calibrate` from {fitted_from}; refit rather than edit.",
             f"description: {json.dumps(description)}"]
    for key, value in asdict(engine).items():
        if isinstance(value, float):
            value = float(f"{value:.4g}") if value != int(value) else value
        lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def bootstrap_factors(rows: list[Measurement], hardware: HardwareSpec, start: EngineProfile, draws: int,
                      seed: int = 0, params: Iterable[str] = FIT_PARAMS) -> tuple[tuple[str, ...], list[list[float]]]:
    """How far the fitted parameters move when the data are redrawn: ``draws`` refits, each on a
    cluster bootstrap of the graph-mode rows (the (model, phase) groups -- decode of one model,
    prefill of another, ... -- drawn with replacement, so a draw can lose or double a whole
    model; the matmul sweep's rows drawn one by one and always present, as in leave-one-model-
    out), each parameter as a factor on the all-data fit. Returns (parameters, factors per draw).

    The spread is the fit's uncertainty *given the model*: what the data cannot pin down, not
    the model's own error (``sim.validate``'s held-out errors)."""
    rng = np.random.default_rng(seed)
    graph = [r for r in rows if r.mode == "graph"]
    sweep = [r for r in graph if r.model is None]
    clusters: dict[tuple[str, str], list[Measurement]] = {}
    for r in graph:
        if r.model is not None:
            clusters.setdefault((r.model.name, r.kind), []).append(r)
    groups = [clusters[k] for k in sorted(clusters)]
    full = fit_engine(graph, hardware, start, params).engine
    names = tuple(p for p in params if getattr(full, p) is not None and
                  (p != "low_precision_compute_efficiency" or any(
                      r.kind == "gemm_sweep" and Precision(weights=r.dtype).compute_format != "bf16" for r in graph)))
    out = []
    for _ in range(draws):
        picked = [r for i in rng.integers(0, len(groups), len(groups)) for r in groups[i]] if groups else []
        for dtype in sorted({r.dtype for r in sweep}):      # bf16 and fp8 rows each redrawn among themselves
            same = [r for r in sweep if r.dtype == dtype]
            picked += [same[i] for i in rng.integers(0, len(same), len(same))]
        eng = fit_engine(picked, hardware, start, params).engine
        out.append([float(getattr(eng, p)) / float(getattr(full, p)) for p in names])
    return names, out


def draws_yaml(names: tuple[str, ...], factors: list[list[float]], source: str, hardware: str, seed: int) -> str:
    """The draws file the bands read (``sim/tools/calibration/<hardware>_engine_draws.yaml``,
    :mod:`sim.tools.uncertainty`)."""
    lines = ["# Calibration uncertainty: factors on the engine parameters the step-time fit adjusts, one",
             "# row per refit on a cluster bootstrap of the measurements (bootstrap_factors in",
             "# sim/tools/calibration/engine_fit.py). Written by `python -m sim.calibrate data=FILE uncertainty=N`;",
             "# refit rather than edit.",
             f"source: {json.dumps(source)}", f"hardware: {hardware}", f"seed: {seed}",
             f"params: {json.dumps(list(names))}", "factors:"]
    lines += ["  - [" + ", ".join(f"{f:.5f}" for f in row) + "]" for row in factors]
    return "\n".join(lines) + "\n"
