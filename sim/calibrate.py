"""``python -m sim.calibrate data=FILE [hardware=h100] [name=NAME] [out=PATH] [start=ENGINE]``

Fits an engine profile to step-time measurements (JSONL rows as in ``shared/calibration``)
with the hardware held at its datasheet values, prints the per-row error table and the
median absolute error, and writes two profiles: ``NAME_cudagraph`` (graph-mode rows) and
``NAME_eager`` (same kernels, host-launch-bound, fitted on eager rows) into ``out``
(default ``conf/engine``).
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from .calibration import fit_engine, profile_yaml, read_measurements
from .cli import fail, guarded
from .presets import CONF_DIR, load_engine, load_hardware


def parse_args(argv: list[str]) -> dict[str, str]:
    args = {}
    for a in argv:
        if "=" not in a:
            fail(f"argument {a!r} is not KEY=VALUE; allowed keys: data, hardware, name, out, start")
        k, v = a.split("=", 1)
        if k not in ("data", "hardware", "name", "out", "start"):
            fail(f"unknown argument {k!r}; allowed: data, hardware, name, out, start")
        args[k] = v
    if "data" not in args:
        fail("data=FILE is required (a JSONL file of step-time measurements)")
    return args


@guarded
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    hardware = load_hardware(args.get("hardware", "h100"))
    name = args.get("name", "pytorch")
    start = load_engine(args["start"]) if "start" in args else None
    from .engine import EngineProfile
    # Collective settings are not in single-GPU data: NCCL ring from PyTorch, with a software
    # latency that puts an 8-GPU small all-reduce at the 19-25 us measured on 8xH100 through
    # torch.distributed (published_numbers.md section 2.2).
    start = start or EngineProfile(name=name, allreduce_algorithm="ring", collective_software_us=12.0)
    rows = read_measurements(args["data"])
    result = fit_engine(rows, hardware, start)
    for r in result.rows:
        print(f"{r['label']:48s} measured {r['measured_s'] * 1e3:9.3f} ms  predicted {r['predicted_s'] * 1e3:9.3f} ms"
              f"  error {r['error'] * 100:+6.1f}%")
    graph_err = sorted(abs(r["error"]) for r in result.rows if r["mode"] == "graph")
    eager_err = sorted(abs(r["error"]) for r in result.rows if r["mode"] == "eager")
    out_dir = Path(args.get("out", CONF_DIR / "engine"))
    out_dir.mkdir(parents=True, exist_ok=True)
    source = Path(args["data"]).name
    graph = replace(result.engine, name=f"{name}_cudagraph", cuda_graphs=True)
    eager = replace(result.engine, name=f"{name}_eager", cuda_graphs=False)
    (out_dir / f"{name}_cudagraph.yaml").write_text(profile_yaml(
        graph, f"{name} engine with CUDA graphs on {hardware.name} (simple PyTorch decoder, ~30 kernels/layer)", source))
    (out_dir / f"{name}_eager.yaml").write_text(profile_yaml(
        eager, f"{name} engine in eager mode on {hardware.name} (host-launch-bound)", source))
    import numpy as np
    report = {"rows": len(result.rows), "median_abs_error_graph": float(np.median(graph_err)) if graph_err else None,
              "median_abs_error_eager": float(np.median(eager_err)) if eager_err else None,
              "written": [str(out_dir / f"{name}_cudagraph.yaml"), str(out_dir / f"{name}_eager.yaml")]}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
