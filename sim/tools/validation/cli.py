"""``python -m sim.validate [data=FILE.jsonl] [out=DIR] [hardware=h100] [published=true|false] [groups=G1,G2]``.

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
``groups=`` restricts the published part to some groups; ``published=false`` skips it.
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
    out: dict[str, list[Any]] = {k: [] for k in ("label", "kind", "mode", "model", "engine", "measured_s", "predicted_s", "error")}
    for r in rows:
        eng = engines[r.mode]
        p = predict(r, hw, eng)
        for k, v in (("label", r.label), ("kind", r.kind), ("mode", r.mode), ("model", _model_of(r.label)),
                     ("engine", eng.name), ("measured_s", r.measured_s), ("predicted_s", p),
                     ("error", p / r.measured_s - 1.0)):
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


def leave_one_model_out(data: Path, hardware: str = "h100") -> list[dict[str, Any]]:
    """Refit without each model's rows; parameter drift and held-out error."""
    hw = load_hardware(hardware)
    rows = [r for r in read_measurements(data) if r.mode == "graph"]
    start = replace(load_engine("pytorch_cudagraph"))
    full = fit_engine(rows, hw, start).engine
    out = []
    for model in sorted({_model_of(r.label) for r in rows} - {"gemm"}):
        kept = [r for r in rows if _model_of(r.label) != model]
        held = [r for r in rows if _model_of(r.label) == model]
        eng = fit_engine(kept, hw, start).engine
        # relative change of every fitted parameter; one at its zero bound (the per-step
        # overhead of the measured engine) is compared in absolute terms instead
        drift = {p: abs(getattr(eng, p) / getattr(full, p) - 1.0) for p in FIT_PARAMS if getattr(full, p) > 1e-6}
        at_zero = {p: abs(getattr(eng, p) - getattr(full, p)) for p in FIT_PARAMS if getattr(full, p) <= 1e-6}
        errs = [abs(predict(r, hw, eng) / r.measured_s - 1.0) for r in held]
        out.append({"held_out": model, "max_param_drift": max(drift.values()), "drift": drift,
                    "change_at_zero_bound": at_zero, "held_out_median_abs_error": float(np.median(errs))})
    return out


def markdown(table: pa.Table, groups: dict, loo: list[dict[str, Any]], data: Path) -> str:
    d = table.to_pydict()
    lines = [f"# Validation against {data.name}", "",
             "| group | rows | median abs error | worst abs error |", "|---|---|---|---|"]
    for k, g in groups.items():
        lines.append(f"| {k} | {g['rows']} | {g['median_abs_error']:.1%} | {g['worst_abs_error']:.1%} |")
    lines += ["", "Leave one model out (graph mode): refit on the others, predict the held-out model.", "",
              "| held-out model | largest parameter change | held-out median abs error |", "|---|---|---|"]
    for r in loo:
        lines.append(f"| {r['held_out']} | {r['max_param_drift']:.1%} | {r['held_out_median_abs_error']:.1%} |")
    lines += ["", "| measurement | engine | measured ms | predicted ms | error |", "|---|---|---|---|---|"]
    for i in range(table.num_rows):
        lines.append(f"| {d['label'][i]} | {d['engine'][i]} | {d['measured_s'][i] * 1e3:.3f} | "
                     f"{d['predicted_s'][i] * 1e3:.3f} | {d['error'][i]:+.1%} |")
    return "\n".join(lines) + "\n"


@guarded
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = dict(key_values(sys.argv[1:] if argv is None else argv))
    allowed = {"data", "out", "hardware", "published", "groups"}
    unknown = sorted(set(args) - allowed)
    if unknown:
        fail(f"unknown argument(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    if args.get("published", "true") not in ("true", "false"):
        fail(f"published={args['published']!r} is not one of ['true', 'false']")
    data = Path(args["data"]) if "data" in args else next((p for p in DEFAULT_DATA if p.is_file()), DEFAULT_DATA[0])
    out = Path(args.get("out", "."))
    hardware = args.get("hardware", "h100")
    table = validation_table(data, hardware)
    groups = group_errors(table)
    loo = leave_one_model_out(data, hardware)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "validation.parquet")
    (out / "validation.md").write_text(markdown(table, groups, loo, data))
    report: dict[str, Any] = {"data": str(data), "groups": groups,
              "leave_one_model_out": [{k: v for k, v in r.items() if k not in ("drift", "change_at_zero_bound")}
                                      for r in loo],
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
        report["written"] += [str(out / "published.md"), str(out / "published.parquet")]
    print(json.dumps(report))
    return report
