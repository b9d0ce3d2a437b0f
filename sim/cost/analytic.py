"""Closed-form (vectorised) decode performance of a deployment, from the simulator's own cost model.

For a parallel split (``tp`` tensor ranks, optionally a 2-D ``tp_cols`` grid, ``pp`` pipeline
stages) and arrays of batch sizes, the per-token latency is the step time of one
micro-batch through every stage — computed by the same :class:`~sim.step_time.StepTimePredictor`
and collective schedules the discrete-event simulator uses, evaluated on numpy arrays — so
the analytic model and the simulator cannot drift apart. Steady decode is assumed: every
sequence has ``context_len`` cached tokens and adds one token per step; with ``pp`` stages,
``pp`` micro-batches of ``batch`` sequences are in flight, so throughput is
``pp x batch / latency`` while each request sees one token per latency.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np

from sim.build import build_graph, make_predictor, make_speculative
from sim.config.schema import RunConfig
from sim.cost.fabric import Fabric
from sim.cost.placement import draft_gpus, placement, shardable
from sim.cost.step_time import StepTimePredictor
from sim.policy.speculative import SpeculativeDecoder, expected_tokens
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
    """Vectorised decode latency, throughput, memory fit and cost for splits of one config."""

    def __init__(self, cfg: RunConfig, max_gpus: int | None = None) -> None:
        """``max_gpus``: the largest deployment to be asked for; multi-node splits then share
        one fabric of that size (a deployment uses its first GPUs, and routes between them do
        not depend on how many more nodes hang off the same rails)."""
        self.cfg = cfg
        self.max_gpus = max_gpus
        self._fabrics: dict[tuple, Fabric] = {}

    def _deployment_cfg(self, split: Split) -> RunConfig:
        cfg = self.cfg
        topo = cfg.topology
        if topo.kind == "hgx" and split.gpus + cfg.speculative.extra_gpus > topo.gpus_per_node:
            topo = replace(topo, kind="multi_node_ib", nodes="auto")
        return replace(cfg, parallel=replace(cfg.parallel, tp=split.tp, pp=split.pp, dp=1, tp_cols=split.tp_cols),
                       topology=topo)

    def _fabric(self, split: Split) -> tuple[RunConfig, Fabric]:
        cfg = self._deployment_cfg(split)
        need = split.gpus + cfg.speculative.extra_gpus
        gpus = max(need, self.max_gpus or 0) if cfg.topology.kind == "multi_node_ib" else need
        key = (cfg.topology.kind, -(-gpus // cfg.topology.gpus_per_node))
        fabric = self._fabrics.get(key)
        if fabric is None:
            graph_cfg = replace(cfg, parallel=replace(cfg.parallel, tp=gpus, pp=1, tp_cols=1),
                                speculative=replace(cfg.speculative, method="none"))
            fabric = Fabric(build_graph(graph_cfg), cfg.engine,
                            oneshot_capable=cfg.hardware.scaleup_link != "pcie",
                            software_latency_scale=cfg.network.latency_scale)
            self._fabrics[key] = fabric
        return cfg, fabric

    def predictor(self, split: Split) -> StepTimePredictor:
        cfg, fabric = self._fabric(split)
        return make_predictor(cfg, fabric, placement(cfg, list(fabric.gpus))[0])

    def speculative(self, split: Split) -> SpeculativeDecoder:
        cfg, fabric = self._fabric(split)
        gpus = list(fabric.gpus)
        stages = placement(cfg, gpus)[0]
        return make_speculative(cfg, fabric, make_predictor(cfg, fabric, stages), stages, draft_gpus(cfg, gpus, 0))

    def decode(self, split: Split, batch: Iterable[float], context_len: float = 0.0,
               gamma: int | str | None = None) -> dict[str, np.ndarray]:
        """Steady-decode metrics per batch size (arrays aligned with ``batch``).

        With speculative decoding configured, one pass drafts ``gamma`` tokens and verifies
        ``gamma + 1`` (``gamma`` from the config unless given; ``auto`` picks the best per batch
        size); the per-token latency is the pass time over the expected tokens per pass.
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
        best_rate = None
        for g in candidates:
            t_g = spec.pass_time(b, ctx, g)
            total = np.broadcast_to(np.asarray(t_g.total_s, dtype=np.float64), b.shape)
            e_g = expected_tokens(sc.acceptance, g) if g > 0 else 1.0
            rate = e_g / total
            if best_rate is None:
                best_rate, t, pass_s, tokens, gam = rate, t_g, total, np.full(b.shape, e_g), np.full(b.shape, g)
            else:
                better = rate > best_rate
                best_rate = np.where(better, rate, best_rate)
                pass_s = np.where(better, total, pass_s)
                tokens = np.where(better, e_g, tokens)
                gam = np.where(better, g, gam)
                t = t_g if better.all() else t  # parts of the last uniformly-best gamma (auto: see gamma column)
        latency = pass_s / tokens
        eng, hw = cfg.engine, cfg.hardware
        usable = hw.memory_bytes * eng.gpu_memory_utilization - eng.activation_reserve_GB * 1e9
        in_flight = b * split.pp
        extra = int(gam.max()) + 1
        fits = np.ones_like(b, dtype=bool)
        for s in range(split.pp):
            weights = pred.weight_bytes_per_gpu(s)
            kv = pred.kv_bytes_per_token_per_gpu(s)
            if s == 0 and spec.draft is not None and sc.placement == "same":
                weights += spec.draft.weight_bytes_per_gpu(0)
                kv += spec.draft.kv_bytes_per_token_per_gpu(0)
            fits &= weights + in_flight * (ctx + extra) * kv <= usable
        throughput = in_flight / latency
        price = (split.gpus + sc.extra_gpus) * hw.usd_per_hour
        parts = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), b.shape) for k, v in t.as_dict().items()}
        return {
            "batch": b, "latency_s": latency, "speed_tok_s": 1.0 / latency, "throughput_tok_s": throughput,
            "usd_per_mtok": price / 3600.0 / throughput * 1e6, "fits": fits, "gamma": gam,
            "tokens_per_pass": tokens, "pass_s": pass_s,
            **{k: v for k, v in parts.items() if k != "total_s"},
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
    :class:`sim.steptime.StepModel`): ``seqs`` decodes at the mean context ``isl + osl/2`` plus
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
