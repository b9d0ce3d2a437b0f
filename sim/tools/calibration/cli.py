"""``python -m sim.calibrate data=FILE [hardware=h100] [name=NAME] [out=PATH] [start=ENGINE] [fit=default|all|P1,P2]``

Fits an engine profile to step-time measurements (JSONL rows as in ``shared/calibration``)
with the hardware held at its datasheet values, prints the per-row error table and the
median absolute error, and writes two profiles: ``NAME_cudagraph`` (graph-mode rows) and
``NAME_eager`` (same kernels, host-launch-bound, fitted on eager rows) into ``out``
(default ``conf/engine``). ``fit=`` chooses the fitted parameters: ``default`` (those the
step data identify, :data:`sim.tools.calibration.engine_fit.FIT_PARAMS`; the rest keep their documented values),
``all`` (also attention, elementwise and per-step overhead) or a comma-separated list.

``python -m sim.calibrate data=LOG[,LOG...] [data=LOG ...] format=nccl-tests [hardware=auto|NAME]
[name=NAME] [out=DIR] [collective=allreduce|allgather] [network=auto|ib|roce] [nic_GBps=X]
[max_bytes=B] [launch_us=US]`` fits per-link latency and bandwidth to nccl-tests text logs instead
(:mod:`sim.tools.calibration.link_fit`; the format is detected when every ``data`` file reads like nccl-tests
output), prints measured vs predicted per row (through the simulator's Fabric) with the
median error per log, and writes one topology per system to ``out`` (default
``conf/topology``) for ``topology=NAME``.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from sim.config.parse import load_engine, load_hardware
from sim.config.presets import CONF_DIR
from sim.tools.calibration.engine_fit import (
    DOCUMENTED_DEFAULTS,
    FIT_BOUNDS,
    FIT_PARAMS,
    bootstrap_factors,
    draws_yaml,
    fit_engine,
    profile_yaml,
    read_measurements,
)
from sim.tools.cli import fail, guarded, key_values

STEP_ARGS = ("data", "hardware", "name", "out", "start", "fit", "uncertainty", "draws_out")


def fit_params(choice: str) -> tuple[str, ...]:
    """The parameters ``fit=`` names (one-line error for unknown ones)."""
    if choice == "default":
        return FIT_PARAMS
    if choice == "all":
        return tuple(FIT_BOUNDS)
    names = tuple(n.strip() for n in choice.split(",") if n.strip())
    unknown = [n for n in names if n not in FIT_BOUNDS]
    if unknown or not names:
        fail(f"fit={choice!r}: unknown parameter(s) {unknown}; allowed: default, all, or names from {sorted(FIT_BOUNDS)}")
    return names


def parse_args(argv: list[str]) -> dict[str, str]:
    args = {}
    for a in argv:
        if "=" not in a:
            fail(f"argument {a!r} is not KEY=VALUE; allowed keys: {', '.join(STEP_ARGS)}")
        k, v = a.split("=", 1)
        if k not in STEP_ARGS:
            fail(f"unknown argument {k!r}; allowed: {', '.join(STEP_ARGS)}")
        args[k] = v
    if "data" not in args:
        fail("data=FILE is required (a JSONL file of step-time measurements)")
    return args


@guarded
def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if is_nccl_request(argv):
        return nccl_main(argv)
    args = parse_args([a for a in argv if not a.startswith("format=")])
    hardware = load_hardware(args.get("hardware", "h100"))
    name = args.get("name", "pytorch")
    start = load_engine(args["start"]) if "start" in args else None
    from sim.spec.engine import EngineProfile
    # Collective settings are not in single-GPU data: NCCL ring from PyTorch, with a software
    # latency that puts an 8-GPU small all-reduce at the 19-25 us measured on 8xH100 through
    # torch.distributed (published_numbers.md section 2.2).
    start = start or EngineProfile(name=name, allreduce_algorithm="ring", collective_software_us=12.0,
                                   **DOCUMENTED_DEFAULTS)
    rows = read_measurements(args["data"])
    result = fit_engine(rows, hardware, start, fit_params(args.get("fit", "default")))
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
    draws_written = []
    if "uncertainty" in args:
        try:
            n = int(args["uncertainty"])
        except ValueError:
            n = 0
        if n < 2:
            fail(f"uncertainty={args['uncertainty']!r} must be an integer >= 2 (bootstrap refits)")
        names, factors = bootstrap_factors(rows, hardware, start, n, params=fit_params(args.get("fit", "default")))
        # not into conf/ (every file there is a preset of a config group): beside this module, where
        # the bands read it
        path = Path(args.get("draws_out", Path(__file__).resolve().parent / f"{hardware.name}_engine_draws.yaml"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(draws_yaml(names, factors, f"{source} ({len(rows)} rows)", hardware.name, 0))
        draws_written.append(str(path))
    report = {"rows": len(result.rows), "median_abs_error_graph": float(np.median(graph_err)) if graph_err else None,
              "median_abs_error_eager": float(np.median(eager_err)) if eager_err else None,
              "written": [str(out_dir / f"{name}_cudagraph.yaml"), str(out_dir / f"{name}_eager.yaml"), *draws_written]}
    print(json.dumps(report))
    return report


# ----------------------------------------------------------------------------- nccl-tests logs

NCCL_KEYS = ("data", "format", "hardware", "name", "out", "collective", "network", "nic_GBps", "max_bytes", "launch_us")


def _data_files(pairs: list[tuple[str, str]]) -> list[str]:
    return [f for k, v in pairs if k == "data" for f in v.split(",") if f]


def is_nccl_request(argv: list[str]) -> bool:
    """``format=nccl-tests``, or no ``format`` and every ``data`` file reads like nccl-tests output."""
    from sim.tools.calibration.nccl_log import looks_like_nccl_tests

    pairs = [(k, v) for k, v in (a.split("=", 1) for a in argv if "=" in a)]  # the chosen path reports bad arguments
    fmt = [v for k, v in pairs if k == "format"]
    if fmt:
        if fmt[-1] not in ("nccl-tests", "jsonl", "auto"):
            fail(f"format={fmt[-1]!r} is not one of ['auto', 'nccl-tests', 'jsonl']")
        if fmt[-1] != "auto":
            return fmt[-1] == "nccl-tests"
    files = _data_files(pairs)
    return bool(files) and all(looks_like_nccl_tests(f) for f in files)


def _hardware_for(device: str, choice: str):
    """The hardware preset named by ``choice``, or (``auto``) the one named in the GPU's name."""
    import re

    from sim.config.presets import preset_names

    if choice != "auto":
        return load_hardware(choice)
    flat = re.sub(r"[^a-z0-9]", "", device.lower())
    hits = [n for n in preset_names("hardware") if "_" not in n and n in flat]
    if not hits:
        fail(f"cannot tell the hardware preset from GPU name {device!r}; pass hardware=NAME")
    return load_hardware(max(hits, key=len))


def _run_config(mapping: dict, hardware_name: str, gpus: int):
    """A RunConfig whose topology is ``mapping`` (for the builder); model/engine are placeholders."""
    from sim.config.parse import parse_config
    from sim.config.presets import load_preset

    return parse_config({"hardware": load_preset("hardware", hardware_name), "model": load_preset("model", "llama3_70b"),
                         "engine": {"name": "nccl_tests_fit", "allreduce_algorithm": "nccl_model"},
                         "topology": mapping, "parallel": {"tp": 1, "dp": gpus}})


def _topology_yaml(system: str, mapping: dict, fit, members: list, medians: dict, hardware: str) -> str:
    first = members[0]
    lines = [f"# {system}: link parameters fitted by `python -m sim.calibrate format=nccl-tests` (sim/tools/calibration/link_fit.py)",
             f"# to nccl-tests logs: {', '.join(s.log.name for s in members)}.",
             f"# Use with hardware={hardware}; engine.allreduce_algorithm=nccl_model and",
             f"# engine.collective_software_us={fit.software_us:.3f} reproduce the logs (one process per GPU;",
             f"# add {fit.launch_us:.3f} us per extra GPU when one process drives several). The `fitted`",
             "# block is documentation: the topology loader ignores it."]
    lines += [f"{k}: {json.dumps(v) if isinstance(v, bool) else v}" for k, v in mapping.items()]
    hop_intra, hop_net = fit.hops_us(first)
    lines += ["fitted:",
              f"  hardware: {hardware}",
              f"  logs: [{', '.join(s.log.name for s in members)}]",
              ("  engine: {allreduce_algorithm: nccl_model, oneshot_max_bytes: 0, "
               f"collective_software_us: {fit.software_us:.4f}}}"),
              f"  base_us: {fit.base_us:.4f}            # NCCL LL base 6.8 + collective software",
              f"  launch_us_per_extra_gpu: {fit.launch_us:.4f}   # host launch, one process driving several GPUs",
              f"  hop_intra_us: {hop_intra:.4f}         # GPU-to-GPU route inside a node",
              (f"  bandwidth_intra_GBps: {fit.bw_intra_GBps[first.intra_key]:.3f}"
               f"   # datasheet bound {fit.bounds_GBps[first.intra_key]:g}")]
    if first.net_key:
        lines += [f"  hop_net_us: {hop_net:.4f}           # network part of a cross-node route ({first.network})",
                  (f"  bandwidth_net_GBps: {fit.bw_net_GBps[first.net_key]:.3f}"
                   f"   # per NIC; bound {fit.bounds_GBps[first.net_key]:g}")]
    lines.append("  median_abs_error_le_max_bytes:")
    lines += [f"    {s.log.name}: {medians[s.log.name]:.4f}" for s in members]
    return "\n".join(lines) + "\n"


def nccl_main(argv: list[str]) -> dict:
    """Fit link parameters to nccl-tests logs, report errors through the Fabric, write topologies."""
    import numpy as np

    from sim.tools.calibration.link_fit import (
        LogSystem,
        errors,
        fabric_times_us,
        fit_links,
        launch_identified,
        network_from_name,
        topology_mapping,
    )
    from sim.tools.calibration.nccl_log import parse_nccl_log

    pairs = key_values(argv)
    for k, _ in pairs:
        if k not in NCCL_KEYS:
            fail(f"unknown argument {k!r} for format=nccl-tests; allowed: {', '.join(NCCL_KEYS)}")
    args = dict(pairs)
    files = _data_files(pairs)
    if not files:
        fail("data=FILE is required (nccl-tests text output; several: data=A,B or data=A data=B)")
    try:
        max_bytes = float(args.get("max_bytes", 1 << 20))
        nic = float(args["nic_GBps"]) if "nic_GBps" in args else None
        launch = float(args["launch_us"]) if "launch_us" in args else None
    except ValueError:
        fail("max_bytes, nic_GBps and launch_us must be numbers")
    if nic is not None and nic <= 0:
        fail(f"nic_GBps={nic!r} must be > 0")
    if args.get("network", "auto") not in ("auto", "ib", "roce"):
        fail(f"network={args['network']!r} is not one of ['auto', 'ib', 'roce']")
    systems = []
    for f in files:
        log = parse_nccl_log(f, args.get("collective"))
        net = args.get("network", "auto")
        systems.append(LogSystem(log, _hardware_for(log.device, args.get("hardware", "auto")),
                                 (network_from_name(log.name) if net == "auto" else net) if log.nodes > 1 else None, nic))
    fit = fit_links(systems, max_bytes=max_bytes, launch_us=launch)
    if launch is None and not launch_identified(systems) and any(s.log.gpus_per_process > 1 for s in systems):
        print("# note: no system has both one-process (-g N) and one-process-per-GPU logs, so the launch cost "
              "and the per-hop latency trade off; fit jointly with such a pair or pass launch_us=US")
    groups: dict[str, list] = {}
    for s in systems:
        groups.setdefault(s.system, []).append(s)
    name = args.get("name")
    out_dir = Path(args.get("out", CONF_DIR / "topology"))
    medians, written = {}, []
    for system, members in groups.items():
        mapping = topology_mapping(fit, members[0])
        for s in members:
            rc = _run_config(mapping, s.hardware.name, s.log.ranks)
            pred = fabric_times_us(s.log, rc, fit.collective_software_us(s))
            e = errors(s, pred, max_bytes)
            medians[s.log.name] = e["median_abs_error"]
            print(f"# {s.log.name} ({system}: {s.log.ranks} ranks, {s.log.nodes} node(s), "
                  f"{s.log.gpus_per_process} GPU(s)/process, {s.log.collective})")
            for b, m, p_, err in zip(s.log.bytes, s.log.time_us, pred, e["error"]):
                mark = "" if b <= max_bytes else "   (not fitted)"
                print(f"{s.log.name[:40]:40s} {int(b):>12d} B  measured {m:10.2f} us  predicted {p_:10.2f} us"
                      f"  error {err * 100:+7.1f}%{mark}")
            print(f"{s.log.name}: median |error| (<= {int(max_bytes)} B) {e['median_abs_error'] * 100:.1f}%")
        fname = (name if len(groups) == 1 else f"{name}_{system}") if name else f"{system}_nccl_fit"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{fname}.yaml"
        path.write_text(_topology_yaml(system, mapping, fit, members, medians, members[0].hardware.name))
        written.append(str(path))
    report = {"logs": len(systems), "base_us": round(fit.base_us, 4), "software_us": round(fit.software_us, 4),
              "launch_us_per_extra_gpu": round(fit.launch_us, 4),
              "hop_intra_us": {k: round(v, 4) for k, v in fit.hop_intra_us.items()},
              "hop_net_us": {k: round(v, 4) for k, v in fit.hop_net_us.items()},
              "bandwidth_intra_GBps": {k: round(v, 3) for k, v in fit.bw_intra_GBps.items()},
              "bandwidth_net_GBps": {k: round(v, 3) for k, v in fit.bw_net_GBps.items()},
              "median_abs_error": {k: round(v, 4) for k, v in medians.items()},
              "max_median_abs_error": round(float(np.max(list(medians.values()))), 4), "written": written}
    print(json.dumps(report))
    return report
