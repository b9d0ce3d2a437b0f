"""Closed-form (vectorised) decode performance of a deployment, from the simulator's own cost model.

For a parallel split (``tp`` tensor ranks, optionally a 2-D ``tp_cols`` grid, ``pp`` pipeline
stages) and arrays of batch sizes, the per-token latency is the step time of one
micro-batch through every stage — computed by the same :class:`~sim.cost.step_time.StepTimePredictor`
and collective schedules the discrete-event simulator uses, evaluated on numpy arrays — so
the analytic model and the simulator cannot drift apart. Steady decode is assumed: every
sequence has ``context_len`` cached tokens and adds one token per step; with ``pp`` stages,
``pp`` micro-batches of ``batch`` sequences are in flight, so throughput is
``pp x batch / latency`` while each request sees one token per latency.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from sim.config.schema import RunConfig
from sim.cost.memory import stage_bytes, usable_bytes
from sim.cost.placement import shardable
from sim.cost.step_time import StepTimePredictor
from sim.policy.speculative import SpeculativeDecoder, best_gamma
from sim.spec.batch import BatchShape


@dataclass(frozen=True)
class Split:
    """How ``gpus = tp x pp`` GPUs serve one replica; ``tp_cols > 1`` is 2-D tensor parallelism."""

    tp: int
    pp: int = 1
    tp_cols: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


def valid_splits(cfg: RunConfig, gpus: int) -> list[Split]:
    """Every (tp, pp, tp_cols) with tp x pp = gpus the model's shape allows.

    TP must divide the attention heads and the MLP width; pipeline stages at most the layers;
    a 2-D grid keeps its rows (tp / tp_cols consecutive ranks) inside one node.
    """
    m, per_node = cfg.model, cfg.topology.gpus_per_node
    out = []
    for tp in range(1, gpus + 1):
        if gpus % tp or not shardable(m, tp):
            continue
        pp = gpus // tp
        if pp > m.num_hidden_layers:
            continue
        for cols in range(1, tp + 1):
            if tp % cols == 0 and (cols == 1 or tp // cols <= per_node) and (cols == 1 or tp > 1):
                if cols > 1 and tp // cols == 1:
                    continue
                out.append(Split(tp, pp, cols))
    return out


class AnalyticModel:
    """Vectorised decode latency, throughput, memory fit and cost for splits of one config.

    ``speculative_for(split)`` and ``predictor_for(split)`` give one replica's cost models
    under a split; :func:`sim.build.analytic_model` wires them from the same builder the
    simulator uses, so both price a step identically.
    """

    def __init__(self, cfg: RunConfig, speculative_for: Callable[[Split], SpeculativeDecoder],
                 predictor_for: Callable[[Split], StepTimePredictor]) -> None:
        self.cfg = cfg
        self.speculative, self.predictor = speculative_for, predictor_for

    def decode(self, split: Split, batch: Iterable[float], context_len: float = 0.0,
               gamma: int | str | None = None) -> dict[str, np.ndarray]:
        """Steady-decode metrics per batch size (arrays aligned with ``batch``).

        With speculative decoding configured, one pass drafts ``gamma`` tokens and verifies
        ``gamma + 1`` (``gamma`` from the config unless given; ``auto`` picks the best per batch
        size); the per-token latency is the pass time over the expected tokens per pass. With
        ``pp`` stages, ``pp`` micro-batches are in flight and the busiest stage paces them.
        """
        b = np.asarray(list(batch) if not isinstance(batch, np.ndarray) else batch, dtype=np.float64)
        cfg = self.cfg
        spec = self.speculative(split)
        pred = spec.target
        ctx = float(context_len)
        sc = cfg.speculative
        if gamma is None:
            gamma = sc.num_tokens if sc.enabled else 0
        candidates = range(0, sc.max_num_tokens + 1) if gamma == "auto" else [int(gamma)]
        by_gamma = {g: spec.pass_parts(b, ctx, g) for g in candidates}
        passes = {g: p[0] for g, p in by_gamma.items()}
        totals = {g: np.broadcast_to(np.asarray(t_g.total_s, dtype=np.float64), b.shape) for g, t_g in passes.items()}
        gam, tokens, _ = best_gamma(totals, sc.rates)
        chosen = [gam == g for g in passes]
        pass_s = np.select(chosen, list(totals.values()))
        latency = pass_s / tokens
        hw = cfg.hardware
        usable = usable_bytes(hw, cfg.engine)
        in_flight = b * split.pp
        extra = int(gam.max()) + 1
        fits = np.ones_like(b, dtype=bool)
        shared = spec.draft if sc.placement == "same" else None
        for s in range(split.pp):
            weights, kv = stage_bytes(pred, s, shared)
            fits &= weights + in_flight * (ctx + extra) * kv <= usable
        if split.pp > 1:
            # a pipeline full of micro-batches is paced by its busiest stage (the first, with the
            # host's per-step time and any draft), not by the mean of the stages
            bottleneck = np.select(chosen, [np.broadcast_to(p[1], b.shape) for p in by_gamma.values()])
            throughput = b * tokens / bottleneck
        else:
            throughput = in_flight / latency
        price = (split.gpus + sc.extra_gpus) * hw.usd_per_hour
        # each batch size's four parts at its own gamma
        parts = {k: np.select(chosen, [np.broadcast_to(np.asarray(getattr(t_g, k), dtype=np.float64), b.shape)
                                       for t_g in passes.values()])
                 for k in ("compute_s", "memory_s", "network_s", "fixed_s")}
        return {
            "batch": b, "latency_s": latency, "speed_tok_s": 1.0 / latency, "throughput_tok_s": throughput,
            "usd_per_mtok": price / 3600.0 / throughput * 1e6, "fits": fits, "gamma": gam,
            "tokens_per_pass": tokens, "pass_s": pass_s,
            **parts,
        }


def pareto_mask(speed: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Points not dominated by one both faster and cheaper (ties kept)."""
    order = np.lexsort((cost, -speed))
    keep = np.zeros(speed.shape, dtype=bool)
    best = np.inf
    for i in order:
        if cost[i] < best:
            keep[i] = True
            best = cost[i]
    return keep


def steady_step_s(m, seqs: int, isl: float, osl: float, prefilling: float) -> float:
    """Step time of a continuously batched replica in steady state (``m``: a
    :class:`sim.build.StepModel`): ``seqs`` decodes at the mean context ``isl + osl/2`` plus
    ``prefilling`` prompt tokens of the requests that replace finished ones.

    The prompt tokens are one chunk placed so that its attention work equals the average over
    a whole prompt (``prefilling * isl / 2`` query-key pairs).
    """
    ctx = [isl + osl / 2.0] * seqs
    new = [1] * seqs
    sampled = [1] * seqs
    chunk = int(round(prefilling))
    if chunk >= 1:
        ctx.append(max(isl - chunk, 0) / 2.0)
        new.append(chunk)
        sampled.append(0)
    return m.predictor.step(BatchShape.from_sequences(ctx, new, sampled)).total_s
