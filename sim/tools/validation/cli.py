"""``python -m sim.validate [data=FILE.jsonl] [out=DIR] [hardware=h100] [published=true|false] [groups=G1,G2] [fit=true]``.

Predicted vs measured, in two parts.

For every decode, prefill and matmul row of a calibration file (default: the shared H100
measurements, or the copy in ``tests/fixtures``), predicts the row with the engine profile of
its mode (``pytorch_cudagraph`` for graph rows, ``pytorch_eager`` for eager rows) and writes
``validation.md`` and ``validation.parquet`` (one row per measurement: label, kind, mode,
engine, measured and predicted seconds, relative error) into ``out``; prints one JSON line
with the median and worst absolute error per group. It also refits the graph-mode profile
leaving each model out in turn and reports how far the fitted parameters move and how well
the held-out model is predicted (the transfer test of a calibration).

Second, predicted vs published (``published.md`` and ``published.parquet``): every row of
``sim/tools/validation/published_rows.yaml`` (single-GPU decode speeds, serving-engine decode steps, NIM
Llama-3.3-70B TP2 ITL and TTFT, TensorRT-LLM TTFT and throughput tables, MLPerf Llama-2-70B
offline and server, NCCL and custom all-reduce latencies, Spec-Bench speedups), each with the
engine profile and config that express it and its error (see :mod:`sim.tools.validation.published`).
``groups=`` restricts the published part to some groups; ``published=false`` skips it. The
serving-engine profiles (``vllm``, ``sglang``, ``trtllm``) are fitted on the rows marked
``role: fit``; every fitted row is also predicted by the fit that left its source out.
``fit=true`` prints that fit's values (``engine_fit``: what ``conf/engine/*.yaml`` hold).
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.config.parse import load_engine, load_hardware
from sim.tools.calibration.engine_fit import FIT_PARAMS, fit_engine, predict, read_measurements
from sim.tools.cli import fail, guarded, key_values

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = (ROOT.parent / "shared" / "calibration" / "h100_pytorch_cudagraph.jsonl",
                ROOT / "tests" / "fixtures" / "h100_pytorch_cudagraph.jsonl")
ENGINE_FOR_MODE = {"graph": "pytorch_cudagraph", "eager": "pytorch_eager"}


def _model_of(label: str) -> str:
    return label.split(" ")[0] if not label.startswith("gemm") else "gemm"


def validation_table(data: Path, hardware: str = "h100") -> pa.Table:
    hw = load_hardware(hardware)
    rows = read_measurements(data)
    engines = {mode: load_engine(name) for mode, name in ENGINE_FOR_MODE.items()}
    out: dict[str, list[Any]] = {k: [] for k in ("label", "kind", "family", "mode", "model", "engine", "measured_s",
                                                 "predicted_s", "error")}
    for r in rows:
        eng = engines[r.mode]
        p = predict(r, hw, eng)
        for k, v in (("label", r.label), ("kind", r.kind), ("family", r.family), ("mode", r.mode),
                     ("model", _model_of(r.label)), ("engine", eng.name), ("measured_s", r.measured_s),
                     ("predicted_s", p), ("error", p / r.measured_s - 1.0)):
            out[k].append(v)
    return pa.table(out)


def group_errors(table: pa.Table) -> dict[str, dict[str, float]]:
    """Median and worst absolute relative error per (mode, kind) group and overall."""
    d = table.to_pydict()
    groups: dict[str, list[float]] = {}
    for mode, kind, err in zip(d["mode"], d["kind"], d["error"]):
        for key in (f"{mode}/{kind}", mode, "all"):
            groups.setdefault(key, []).append(abs(err))
    return {k: {"rows": len(v), "median_abs_error": float(np.median(v)), "worst_abs_error": float(np.max(v))}
            for k, v in sorted(groups.items())}


def _hold_out(rows: list, hw, start, full, held_of) -> list[dict[str, Any]]:
    """Refit without each group of rows (``held_of(row)``: its group, None: always kept);
    per group the fitted parameters' drift from the full fit and the held-out errors."""
    out = []
    for name in sorted({g for g in map(held_of, rows) if g is not None}):
        kept = [r for r in rows if held_of(r) != name]
        held = [r for r in rows if held_of(r) == name]
        if len(kept) <= len(FIT_PARAMS):      # too few rows left to pin the parameters: no hold-out
            continue
        eng = fit_engine(kept, hw, start).engine
        # relative change of every fitted parameter; one at its zero bound (the per-step
        # overhead of the measured engine) is compared in absolute terms instead
        drift = {p: abs(getattr(eng, p) / getattr(full, p) - 1.0) for p in FIT_PARAMS if getattr(full, p) > 1e-6}
        at_zero = {p: abs(getattr(eng, p) - getattr(full, p)) for p in FIT_PARAMS if getattr(full, p) <= 1e-6}
        errs = [abs(predict(r, hw, eng) / r.measured_s - 1.0) for r in held]
        worst = max(drift, key=drift.__getitem__)
        out.append({"held_out": name, "rows": len(held), "max_param_drift": drift[worst], "most_drifting_param": worst,
                    "drift": drift, "change_at_zero_bound": at_zero,
                    "held_out_median_abs_error": float(np.median(errs)),
                    "held_out_p90_abs_error": float(np.percentile(errs, 90)), "held_out_errors": errs})
    return out


def _graph_fit(data: Path, hardware: str):
    hw = load_hardware(hardware)
    rows = [r for r in read_measurements(data) if r.mode == "graph"]
    start = replace(load_engine("pytorch_cudagraph"))
    return hw, rows, start, fit_engine(rows, hw, start).engine


def leave_one_model_out(data: Path, hardware: str = "h100") -> list[dict[str, Any]]:
    """Refit without each model's rows (the matmul sweep always kept); parameter drift and
    held-out error."""
    hw, rows, start, full = _graph_fit(data, hardware)
    return _hold_out(rows, hw, start, full, lambda r: None if _model_of(r.label) == "gemm" else _model_of(r.label))


def leave_one_family_out(data: Path, hardware: str = "h100") -> list[dict[str, Any]]:
    """Refit without each step-shape family's rows (long context, big batch, prefill, mixed
    steps, plain decode: :data:`FAMILIES`); drift and held-out error: does a fit on the other
    shapes predict the one it never saw? The matmul sweep is a microbenchmark, not a step
    shape: as in leave-one-model-out it is always kept (:func:`matmul_sweep_held_out` holds it
    out on its own)."""
    hw, rows, start, full = _graph_fit(data, hardware)
    return _hold_out(rows, hw, start, full, lambda r: None if r.family == "gemm" else r.family)


def matmul_sweep_held_out(data: Path, hardware: str = "h100") -> list[dict[str, Any]]:
    """Refit on the model steps alone (the matmul sweep held out): what the steps alone pin."""
    hw, rows, start, full = _graph_fit(data, hardware)
    return _hold_out(rows, hw, start, full, lambda r: "gemm" if r.family == "gemm" else None)


def pooled(held: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and p90 over every held-out row of a hold-out study, and its largest drift."""
    errs = [e for h in held for e in h["held_out_errors"]]
    # None (JSON null), not NaN, when nothing could be held out
    return {"held_out_rows": len(errs), "held_out_median_abs_error": float(np.median(errs)) if errs else None,
            "held_out_p90_abs_error": float(np.percentile(errs, 90)) if errs else None,
            "max_param_drift": max((h["max_param_drift"] for h in held), default=None)}


def markdown(table: pa.Table, groups: dict, loo: list[dict[str, Any]], data: Path,
             lofo: list[dict[str, Any]] | None = None, sweep: list[dict[str, Any]] | None = None) -> str:
    d = table.to_pydict()
    lines = [f"# Validation against {data.name}", "",
             "| group | rows | median abs error | worst abs error |", "|---|---|---|---|"]
    for k, g in groups.items():
        lines.append(f"| {k} | {g['rows']} | {g['median_abs_error']:.1%} | {g['worst_abs_error']:.1%} |")
    for title, held, what in (("Leave one model out", loo, "model"), ("Leave one shape family out", lofo or [], "family"),
                              ("The matmul sweep held out", sweep or [], "rows")):
        if not held:
            continue
        p = pooled(held)
        lines += ["", f"{title} (graph mode): refit on the others, predict the held-out {what}. Pooled over held-out "
                      f"rows: median {p['held_out_median_abs_error']:.1%}, p90 {p['held_out_p90_abs_error']:.1%}; "
                      f"largest parameter change {p['max_param_drift']:.1%}.", "",
                  f"| held-out {what} | rows | largest parameter change (which) | held-out median | held-out p90 |",
                  "|---|---|---|---|---|"]
        for r in held:
            lines.append(f"| {r['held_out']} | {r['rows']} | {r['max_param_drift']:.1%} ({r['most_drifting_param']}) | "
                         f"{r['held_out_median_abs_error']:.1%} | {r['held_out_p90_abs_error']:.1%} |")
    lines += ["", "| measurement | engine | measured ms | predicted ms | error |", "|---|---|---|---|---|"]
    for i in range(table.num_rows):
        lines.append(f"| {d['label'][i]} | {d['engine'][i]} | {d['measured_s'][i] * 1e3:.3f} | "
                     f"{d['predicted_s'][i] * 1e3:.3f} | {d['error'][i]:+.1%} |")
    return "\n".join(lines) + "\n"


@guarded
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = dict(key_values(sys.argv[1:] if argv is None else argv))
    allowed = {"data", "out", "hardware", "published", "groups", "fit"}
    unknown = sorted(set(args) - allowed)
    if unknown:
        fail(f"unknown argument(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    for flag, default in (("published", "true"), ("fit", "false")):
        if args.get(flag, default) not in ("true", "false"):
            fail(f"{flag}={args[flag]!r} is not one of ['true', 'false']")
    if args.get("fit") == "true" and args.get("published") == "false":
        fail("fit=true fits the serving-engine profiles on the published rows: it needs published=true")
    data = Path(args["data"]) if "data" in args else next((p for p in DEFAULT_DATA if p.is_file()), DEFAULT_DATA[0])
    out = Path(args.get("out", "."))
    hardware = args.get("hardware", "h100")
    table = validation_table(data, hardware)
    groups = group_errors(table)
    loo = leave_one_model_out(data, hardware)
    lofo = leave_one_family_out(data, hardware)
    sweep = matmul_sweep_held_out(data, hardware)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "validation.parquet")
    (out / "validation.md").write_text(markdown(table, groups, loo, data, lofo, sweep))
    hidden = ("drift", "change_at_zero_bound", "held_out_errors")
    report: dict[str, Any] = {"data": str(data), "groups": groups,
              "leave_one_model_out": [{k: v for k, v in r.items() if k not in hidden} for r in loo],
              "leave_one_family_out": [{k: v for k, v in r.items() if k not in hidden} for r in lofo],
              "held_out": {"model": pooled(loo), "family": pooled(lofo), "matmul_sweep": pooled(sweep)},
              "written": [str(out / "validation.md"), str(out / "validation.parquet")]}
    if args.get("published", "true") == "true":
        from sim.tools.validation import published
        wanted = set(args["groups"].split(",")) if args.get("groups") else None
        rows = published.load_rows()
        known = {r["group"] for r in rows}
        if wanted and not wanted <= known:
            fail(f"groups={args['groups']!r}: unknown group(s) {sorted(wanted - known)}; allowed: {sorted(known)}")
        ptable = published.published_table(rows, wanted)
        psummary = published.group_summary(ptable)
        pq.write_table(ptable, out / "published.parquet")
        (out / "published.md").write_text(published.markdown(ptable, psummary))
        report["published"] = psummary
        if args.get("fit") == "true":
            from sim.tools.validation.engine_overheads import fit_engines
            report["engine_fit"] = fit_engines(rows)
        report["written"] += [str(out / "published.md"), str(out / "published.parquet")]
    print(json.dumps(report))
    return report
