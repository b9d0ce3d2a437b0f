"""Headline experiment ``headline``: where one decoding token's time goes as tensor parallelism
spreads a model over more GPUs, what per-message latency and link bandwidth each buy, what
speculative decoding amortizes, and which part dominates real traffic at each load.

Design. Llama-3-70B and the MoE preset (Qwen3-235B-A22B, 128 experts, top-8), bf16, tensor-
parallel over ``GPU_COUNTS`` H100s: one HGX node up to 8 (NVSwitch, the engine's custom one-
shot all-reduce for small messages), InfiniBand across nodes beyond with NCCL's all-reduce at the
per-message latencies fitted to real 2- and 4-node nccl-tests logs (:data:`ACROSS_NODES`). One decode step at batch ``BATCHES`` and a
``CONTEXT``-token KV context per sequence, from the step-time model the simulator runs
(:meth:`sim.cost.step_time.StepTimePredictor.step`, the same as ``python -m sim.steptime``; no
queueing): its time in five additive parts,

* ``compute_s``, ``memory_s``, ``fixed_s``: the predictor's own parts (arithmetic, HBM traffic,
  kernel launch gaps and per-step overhead);
* ``network_latency_s``: the step's collectives with every link's bandwidth multiplied by
  ``UNBOUNDED`` (only per-message latencies left: link hops, NCCL's base and software latency);
* ``network_bandwidth_s``: the rest of the step's network time (its serialisation at the links'
  bandwidth). NCCL's protocol choice depends on both, so the split is an attribution: the
  latency part is what an infinitely fast link would leave, the bandwidth part what it saves.

The per-request decode speed is one token per step (``tokens_per_s``). The same step under
``network.latency_scale`` in ``LATENCY_SCALES`` and ``network.bandwidth_scale`` in
``BANDWIDTH_SCALES`` gives what halving latency or multiplying bandwidth buys at each GPU count
(:func:`sweeps`).

Speculative decoding, decomposed (:func:`speculation`): Llama-3-70B with ``PLACEMENTS`` of the
draft -- EAGLE/MTP-like draft heads (``speculative=self``), a Llama-3-8B draft sharded like the
target on its GPUs (``speculative=draft``, ``placement=same``), and the same draft on one GPU of
its own (``placement=separate``: beside a full 8-GPU node it sits on a second node, tokens
handed over InfiniBand) -- at acceptance
``ACCEPTANCE`` and ``GAMMA`` drafted tokens: one steady pass (drafting plus verifying
``GAMMA + 1`` tokens per sequence) divided by its expected tokens per sequence
(:func:`sim.policy.speculative.expected_tokens`), part by part, against one plain decode step
per token. The parts paid once per pass (per-message latency, launch gaps) are divided by the
tokens per pass; the work that grows with the verified tokens (arithmetic, KV reads of the
verified positions) is not.

The regime map (:func:`regime_map`): the bundled Azure code trace (its first ``MAP_REQUESTS``
requests) replayed at ``MAP_RATES`` times its recorded rate on Llama-3-70B over ``MAP_GPUS``
GPUs, each point one discrete-event run (continuous batching, 2,048-token chunked prefill), the
time of every step summed by part over the run; the network's latency part is the same run's
network time with links of unbounded bandwidth (a second run), the bandwidth part the rest. The
regime of a point is its largest part. :func:`bands` gives the headline numbers' spread over
the calibration's parameter uncertainty (and redrawn traffic for the trace runs);
``notebooks/headline.ipynb`` draws them.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import pyarrow as pa

NAME = "headline"
MODELS = {"Llama-3-70B": "llama3_70b", "Qwen3-235B-A22B (MoE)": "qwen3_moe"}
GPU_COUNTS = (4, 8, 16, 32, 64)
QUICK_GPU_COUNTS = (8, 16, 32)
BATCHES = (1, 8, 64)
CONTEXT = 2048
LATENCY_SCALES = (0.25, 0.5, 1.0, 2.0)
BANDWIDTH_SCALES = (1.0, 2.0, 10.0)
#: bandwidth multiplier standing in for an infinitely fast link (the latency part of the split)
UNBOUNDED = 1e6


#: Across nodes: the per-message latencies of the nccl-tests fit to 2- and 4-node H100 InfiniBand
#: all-reduces (conf/topology/h100_ib_nccl_fit.yaml, NCCL's tuning formula, 7-10 % median error
#: on <= 1 MiB), with the datasheet bandwidths (the fit's bandwidth is an LL-protocol effective
#: figure, identified only by small messages; prefill chunks' all-reduces are megabytes).
ACROSS_NODES = ("topology=h100_ib_nccl_fit", "topology.ib_bandwidth_GBps=50", "topology.link_bandwidth_GBps=null",
                "engine.allreduce_algorithm=nccl_model", "engine.oneshot_max_bytes=0",
                "engine.collective_software_us=0.0588")


def network(gpus: int, extra_gpus: int = 0) -> list[str]:
    """The overrides placing a tensor-parallel group of ``gpus`` (and ``extra_gpus`` of a draft):
    one HGX node with the engine's own all-reduce (custom one-shot for small messages, as vLLM
    and SGLang run inside a node) when they fit; beyond, :data:`ACROSS_NODES`."""
    if gpus + extra_gpus <= 8:
        return ["topology=hgx"]
    if gpus <= 8:               # the target in one node, its draft's GPU on the next
        return ["topology=multi_node_ib"]
    return list(ACROSS_NODES)


def _step_model(model: str, gpus: int, latency_scale: float = 1.0, bandwidth_scale: float = 1.0,
                extra: Sequence[str] = (), extra_gpus: int = 0):
    from sim.build import build_step_model
    from sim.config.compose import compose_config

    return build_step_model(compose_config([f"model={model}", f"parallel.tp={gpus}", *network(gpus, extra_gpus),
                                            f"network.latency_scale={latency_scale}",
                                            f"network.bandwidth_scale={bandwidth_scale}", *extra]))


def _decode(batch: int):
    from sim.spec.batch import BatchShape

    return BatchShape.from_sequences([CONTEXT] * batch, [1] * batch, [1] * batch)


def breakdown(gpu_counts: Iterable[int] = GPU_COUNTS, batches: Iterable[int] = BATCHES,
              extra: Sequence[str] = (), models: Iterable[str] = tuple(MODELS)) -> pa.Table:
    """One row per (model, GPUs, batch): the decode step's five parts and the per-request speed.
    A model that does not fit on the GPUs (weights beyond their memory) is left out."""
    from sim.errors import ConfigError

    rows: list[dict[str, Any]] = []
    for label in models:
        model = MODELS[label]
        for gpus in gpu_counts:
            try:
                base = _step_model(model, gpus, extra=extra)
                unbounded = _step_model(model, gpus, bandwidth_scale=UNBOUNDED, extra=extra)
            except ConfigError:
                continue
            for batch in batches:
                step, lat = base.predictor.step(_decode(batch)), unbounded.predictor.step(_decode(batch))
                latency = _latency_part(lat, step)
                rows.append({"model": label, "gpus": gpus, "nodes": max(1, gpus // 8), "batch": batch,
                             "step_s": step.total_s, "tokens_per_s": 1.0 / step.total_s,
                             "compute_s": step.compute_s, "memory_s": step.memory_s,
                             "network_latency_s": latency, "network_bandwidth_s": step.network_s - latency,
                             "fixed_s": step.fixed_s})
    return pa.Table.from_pylist(rows)


def sweeps(gpu_counts: Iterable[int] = GPU_COUNTS, batch: int = 1, extra: Sequence[str] = (),
           models: Iterable[str] = tuple(MODELS)) -> pa.Table:
    """One row per (model, GPUs, swept knob, scale): the decode step at ``batch`` and its change
    against the unscaled network (``change``: step / unscaled step - 1)."""
    from sim.errors import ConfigError

    rows: list[dict[str, Any]] = []
    for label in models:
        model = MODELS[label]
        for gpus in gpu_counts:
            try:
                base_s = _step_model(model, gpus, extra=extra).predictor.step(_decode(batch)).total_s
            except ConfigError:
                continue
            for swept, scales in (("latency", LATENCY_SCALES), ("bandwidth", BANDWIDTH_SCALES)):
                for scale in scales:
                    ls, bs = (scale, 1.0) if swept == "latency" else (1.0, scale)
                    s = _step_model(model, gpus, ls, bs, extra).predictor.step(_decode(batch)).total_s
                    rows.append({"model": label, "gpus": gpus, "batch": batch, "swept": swept, "scale": scale,
                                 "step_s": s, "change": s / base_s - 1.0})
    return pa.Table.from_pylist(rows)


MAP_RATES = (0.05, 0.25, 1.0, 4.0)
MAP_GPUS = (8, 16, 32)
MAP_REQUESTS = 1500


def regime_map(rates: Iterable[float] = MAP_RATES, gpu_counts: Iterable[int] = MAP_GPUS,
               requests: int = MAP_REQUESTS, extra: Sequence[str] = (),
               traces: Iterable[str] = ("azure_code",)) -> pa.Table:
    """One row per (trace, rate scale, GPUs): each part's share of the run's summed step time,
    the dominant part, and the run's TPOT p50/p99 and TTFT p99. ``traces``: bundled workloads
    (``azure_code``, ``mooncake_synthetic``)."""
    from sim.app import evaluate
    from sim.config.compose import compose_config

    rows: list[dict[str, Any]] = []
    for trace, rate, gpus in ((t, r, g) for t in traces for r in rates for g in gpu_counts):
        over = ["model=llama3_70b", f"parallel.tp={gpus}", *network(gpus),
                f"workload={trace}", f"workload.max_requests={requests}", f"workload.rate_scale={rate}",
                "output.progress=never", "output.write_parquet=false", *extra]
        summary = evaluate(compose_config(over))[0]
        unbounded = evaluate(compose_config([*over, f"network.bandwidth_scale={UNBOUNDED}"]))[0]
        t = summary["time_breakdown"]
        # the unbounded run schedules its own steps (a few % fewer or more): its network time per
        # step, times the base run's steps, is the latency part of the base run's network time
        latency = min(t["network_s"], unbounded["time_breakdown"]["network_s"] / unbounded["steps"] * summary["steps"])
        parts = {"compute_s": t["compute_s"], "memory_s": t["memory_s"], "network_latency_s": latency,
                 "network_bandwidth_s": t["network_s"] - latency, "fixed_s": t["fixed_s"]}
        total = sum(parts.values())
        rows.append({"trace": trace, "rate_scale": rate, "gpus": gpus, "requests": requests,
                     **{k.removesuffix("_s") + "_share": v / total for k, v in parts.items()},
                     "regime": max(parts, key=parts.__getitem__).removesuffix("_s"),
                     "tpot_p50_s": summary["tpot_s"]["p50"], "tpot_p99_s": summary["tpot_s"]["p99"],
                     "ttft_p99_s": summary["ttft_s"]["p99"]})
    return pa.Table.from_pylist(rows)


PLACEMENTS = {"draft heads": ["speculative=self"],
              "8B draft, sharded like the target": ["speculative=draft", "speculative.placement=same"],
              "8B draft, own GPU": ["speculative=draft", "speculative.placement=separate"]}
ACCEPTANCE = 0.8
GAMMA = 4
SPEC_BATCHES = (1, 8, 64, 256)
PARTS = ("compute_s", "memory_s", "network_latency_s", "network_bandwidth_s", "fixed_s")


def _spec_model(extra: list[str], gpus: int, bandwidth_scale: float = 1.0, latency_scale: float = 1.0,
                engine: Sequence[str] = ()):
    """Llama-3-70B with a draft placement (``extra``) at ``ACCEPTANCE`` and ``GAMMA``."""
    settings = [] if extra == ["speculative=none"] else [f"speculative.acceptance={ACCEPTANCE}",
                                                          f"speculative.num_tokens={GAMMA}"]
    return _step_model("llama3_70b", gpus, latency_scale, bandwidth_scale, [*extra, *settings, *engine],
                       extra_gpus=1 if "speculative.placement=separate" in extra else 0)   # the draft's own GPU


def _latency_part(unbounded, step) -> float:
    """The network's latency part of ``step``: its network time on links of unbounded bandwidth
    (``unbounded``, the same step priced so), which leaves everything else as it was."""
    assert unbounded.network_s <= step.network_s * (1 + 1e-9) + 1e-15, "unbounded bandwidth made the step slower"
    assert (unbounded.compute_s, unbounded.memory_s, unbounded.fixed_s) == (step.compute_s, step.memory_s, step.fixed_s)
    return min(unbounded.network_s, step.network_s)


def _per_token(step, unbounded, tokens: float) -> dict[str, float]:
    """A pass's (or step's) five parts per generated token (``unbounded``: the same with links of
    unbounded bandwidth, whose network time is the latency part)."""
    latency = _latency_part(unbounded, step)
    parts = {"compute_s": step.compute_s, "memory_s": step.memory_s, "network_latency_s": latency,
             "network_bandwidth_s": step.network_s - latency, "fixed_s": step.fixed_s}
    return {k: v / tokens for k, v in parts.items()}


def _draft_fits(m, extra: Sequence[str], batch: int) -> bool:
    """A draft on its own GPU holds its weights and ``batch`` sequences' KV of ``CONTEXT + GAMMA``
    tokens within that GPU's usable memory (sharded drafts share the target's KV budget)."""
    if "speculative.placement=separate" not in extra:
        return True
    from sim.config.parse import load_model

    cfg = m.cfg
    draft = load_model(cfg.speculative.draft_model)
    usable = cfg.hardware.memory_GB * 1e9 * cfg.engine.gpu_memory_utilization
    need = draft.weight_bytes(cfg.precision.weight_bytes) + batch * (CONTEXT + GAMMA) * draft.kv_bytes_per_token(
        cfg.precision.kv_bytes)
    return need <= usable


def speculation(gpu_counts: Iterable[int] = (8, 16), batches: Iterable[int] = SPEC_BATCHES,
                latency_scale: float = 1.0, engine: Sequence[str] = (),
                placements: Iterable[str] = tuple(PLACEMENTS)) -> pa.Table:
    """One row per (placement, GPUs, batch): per generated token, each part without and with
    speculation (``plain_<part>``, ``spec_<part>``), the tokens per pass and the speedup of the
    per-request decode speed (plain step per token / speculative pass per token)."""
    from sim.policy.speculative import expected_tokens

    rows: list[dict[str, Any]] = []
    tokens = float(expected_tokens(ACCEPTANCE, GAMMA))
    for gpus in gpu_counts:
        plain = _spec_model(["speculative=none"], gpus, latency_scale=latency_scale, engine=engine)
        plain_u = _spec_model(["speculative=none"], gpus, UNBOUNDED, latency_scale, engine)
        for label in placements:
            extra = PLACEMENTS[label]
            m = _spec_model(extra, gpus, latency_scale=latency_scale, engine=engine)
            mu = _spec_model(extra, gpus, UNBOUNDED, latency_scale, engine)
            for batch in batches:
                base = _per_token(plain.predictor.step(_decode(batch)), plain_u.predictor.step(_decode(batch)), 1.0)
                if not _draft_fits(m, extra, batch):
                    continue        # the draft's own GPU cannot hold its weights and this batch's KV
                spec = _per_token(m.spec.pass_time(batch, CONTEXT, GAMMA), mu.spec.pass_time(batch, CONTEXT, GAMMA),
                                  tokens)
                row: dict[str, Any] = {"placement": label, "gpus": gpus, "batch": batch, "latency_scale": latency_scale,
                                       "tokens_per_pass": tokens,
                                       "speedup": sum(base.values()) / sum(spec.values())}
                row.update({f"plain_{k}": v for k, v in base.items()})
                row.update({f"spec_{k}": v for k, v in spec.items()})
                rows.append(row)
    return pa.Table.from_pylist(rows)


def bands(draws: int = 8, quick: bool = False) -> pa.Table:
    """The headline numbers again over ``draws`` draws of the calibration's parameter uncertainty
    (:mod:`sim.tools.uncertainty`: the engine's fitted parameters moved by one bootstrap refit
    each) -- and, for the regime map's discrete-event runs, of the traffic too (the trace's
    request lengths redrawn). One row per headline number: its value, and the 10th / 50th /
    90th percentile over the draws."""
    from sim.config.compose import compose_config
    from sim.tools.uncertainty import UncertaintyConfig, band, draw_overrides

    gpus = (8, 16) if quick else (8, 16, 32)
    base_cfg = compose_config([])
    calib = UncertaintyConfig(draws=draws, traffic=False)
    both = UncertaintyConfig(draws=draws)

    def numbers(engine: Sequence[str], traffic: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in breakdown(gpus, (1,), engine, ("Llama-3-70B",)).to_pylist():
            out[f"70B tokens/s, batch 1, {r['gpus']} GPUs"] = r["tokens_per_s"]
        for r in sweeps(gpus, 1, engine, ("Llama-3-70B",)).to_pylist():
            if (r["swept"], r["scale"]) in (("latency", 0.5), ("bandwidth", 10.0)):
                what = "half the latency" if r["swept"] == "latency" else "10x the bandwidth"
                out[f"70B step change with {what}, {r['gpus']} GPUs"] = r["change"]
        for r in speculation((16,), (1,), engine=engine).to_pylist():
            out[f"speedup, {r['placement']}, 16 GPUs, batch 1"] = r["speedup"]
        requests = 400 if quick else MAP_REQUESTS
        for r in regime_map((0.05,), (16,), requests, [*engine, *traffic]).to_pylist():
            out["network latency share, 0.05x, 16 GPUs"] = r["network_latency_share"]
        for r in regime_map((4.0,), (8,), requests, [*engine, *traffic]).to_pylist():
            out["network bandwidth share, 4x, 8 GPUs"] = r["network_bandwidth_share"]
        return out

    base = numbers((), ())
    drawn = []
    for k in range(1, draws + 1):
        engine = [f"{key}={v}" for key, v in draw_overrides(base_cfg, k, calib).items()]
        traffic = [f"{key}={v}" for key, v in draw_overrides(base_cfg, k, both).items() if not key.startswith("engine.")]
        drawn.append(numbers(engine, traffic))
    return pa.Table.from_pylist([{"number": key, "value": value, "draws": draws,
                                  **band([d[key] for d in drawn], 10, 90)} for key, value in base.items()])
