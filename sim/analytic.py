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

from .batch import BatchShape
from .build import build_graph, make_predictor, placement
from .config import RunConfig
from .fabric import Fabric
from .step_time import StepTimePredictor


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
        if gpus % tp or m.num_attention_heads % tp or m.intermediate_size % tp:
            continue
        if not (m.num_key_value_heads % tp == 0 or tp % m.num_key_value_heads == 0):
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
        if topo.kind == "hgx" and split.gpus > topo.gpus_per_node:
            topo = replace(topo, kind="multi_node_ib", nodes="auto")
        return replace(cfg, parallel=replace(cfg.parallel, tp=split.tp, pp=split.pp, dp=1, tp_cols=split.tp_cols),
                       topology=topo)

    def predictor(self, split: Split) -> StepTimePredictor:
        cfg = self._deployment_cfg(split)
        gpus = max(split.gpus, self.max_gpus or 0) if cfg.topology.kind == "multi_node_ib" else split.gpus
        key = (cfg.topology.kind, -(-gpus // cfg.topology.gpus_per_node))
        fabric = self._fabrics.get(key)
        if fabric is None:
            graph_cfg = replace(cfg, parallel=replace(cfg.parallel, tp=gpus, pp=1, tp_cols=1))
            fabric = Fabric(build_graph(graph_cfg), cfg.engine,
                            oneshot_capable=cfg.hardware.scaleup_link != "pcie",
                            software_latency_scale=cfg.network.latency_scale)
            self._fabrics[key] = fabric
        return make_predictor(cfg, fabric, placement(cfg, list(fabric.gpus))[0])

    def decode(self, split: Split, batch: Iterable[float], context_len: float = 0.0,
               new_tokens: int = 1) -> dict[str, np.ndarray]:
        """Steady-decode metrics per batch size (arrays aligned with ``batch``)."""
        b = np.asarray(list(batch) if not isinstance(batch, np.ndarray) else batch, dtype=np.float64)
        pred = self.predictor(split)
        ctx = float(context_len)
        shape = BatchShape(num_seqs=b, new_tokens=b * new_tokens, kv_tokens_read=b * (ctx + new_tokens),
                           attention_pairs=b * new_tokens * (ctx + (new_tokens + 1) / 2.0), sampled_tokens=b,
                           query_blocks=b * -(-new_tokens // 64))
        t = pred.step(shape)
        latency = np.broadcast_to(np.asarray(t.total_s, dtype=np.float64), b.shape)
        cfg = self.cfg
        eng, hw = cfg.engine, cfg.hardware
        usable = hw.memory_bytes * eng.gpu_memory_utilization - eng.activation_reserve_GB * 1e9
        in_flight = b * split.pp
        fits = np.ones_like(b, dtype=bool)
        for s in range(split.pp):
            need = pred.weight_bytes_per_gpu(s) + in_flight * (ctx + new_tokens) * pred.kv_bytes_per_token_per_gpu(s)
            fits &= need <= usable
        throughput = in_flight / latency
        price = split.gpus * hw.usd_per_hour
        parts = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), b.shape) for k, v in t.as_dict().items()}
        return {
            "batch": b, "latency_s": latency, "speed_tok_s": 1.0 / latency, "throughput_tok_s": throughput,
            "usd_per_mtok": price / 3600.0 / throughput * 1e6, "fits": fits,
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
