"""Where a replica's shards sit: GPU groups of tensor and pipeline parallelism, draft GPUs.

GPUs are placed replica-major, then stage, then tensor rank
(``gpu = replica*tp*pp + stage*tp + rank``), so a tensor-parallel group fills consecutive
GPUs of one node when ``tp`` divides the node size. Pure functions of names and counts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.config.schema import RunConfig


def placement(cfg: RunConfig, gpus: list[str]) -> list[list[list[str]]]:
    """``[replica][stage] -> GPU names`` of the tensor-parallel group."""
    tp, pp, dp, per = cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp, cfg.gpus_per_replica
    return [[gpus[r * per + s * tp: r * per + (s + 1) * tp] for s in range(pp)] for r in range(dp)]


def draft_gpus(cfg: RunConfig, gpus: list[str], replica: int) -> list[str]:
    """GPUs of replica ``replica``'s separate draft model (after its target GPUs)."""
    per, start = cfg.gpus_per_replica, cfg.parallel.gpus_per_replica
    return gpus[replica * per + start: (replica + 1) * per]


def shardable(model, tp: int) -> bool:
    """Whether ``tp``-way tensor parallelism splits the model's heads and MLP evenly."""
    return (model.num_attention_heads % tp == 0 and model.intermediate_size % tp == 0
            and (model.num_key_value_heads % tp == 0 or tp % model.num_key_value_heads == 0))


def tp_groups(ranks: list[str], tp_cols: int) -> dict[str, list[list[str]]]:
    """Rank groups of one stage: the whole TP group, and the row/column groups of a 2-D grid
    (rows = consecutive ranks, inside a node when they fit; cols = strided ranks)."""
    groups = {"tp": [list(ranks)]}
    if tp_cols > 1:
        rows = len(ranks) // tp_cols
        groups["rows"] = [list(ranks[c * rows:(c + 1) * rows]) for c in range(tp_cols)]
        groups["cols"] = [list(ranks[r::rows]) for r in range(rows)]
    return groups
