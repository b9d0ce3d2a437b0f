"""How long a replica takes from "start" to serving: its weights loaded, its engine warmed up.

Modelling assumption: loading streams every GPU's weight shard in parallel from storage at
``load_GBps_per_gpu`` (so a replica's load time is its per-GPU shard over that bandwidth,
whatever its GPU count), then the engine warms up for ``warmup_s`` (imports, torch.compile,
CUDA graph capture, KV cache profiling), a time that does not scale with the weights.

Defaults: Tensorfuse, "Reducing GPU Cold Start Time when using vLLM" (2025-09-01), vLLM with
Llama-3.1-8B-Instruct on an L40S, caches persisted: weight loading 18 s for the ~16 GB
checkpoint (0.89 GB/s), and Dynamo 10 s + graph compilation 13 s + graph capture 7 s + engine
init and imports 34 s = 64 s of warm-up. (Run:ai Model Streamer logs ~1.7 GiB/s per worker
from a VAST filesystem, run-ai/runai-model-streamer#135: faster storage is a config change.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sim.errors import require


@dataclass(frozen=True)
class SpinupConfig:
    """The ``spinup`` section: weight-load bandwidth and engine warm-up of a starting replica."""

    load_GBps_per_gpu: float = 0.889            # 16 GB / 18 s
    warmup_s: float = 64.0

    def __post_init__(self) -> None:
        v = self.load_GBps_per_gpu
        require(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                f"spinup.load_GBps_per_gpu={v!r} must be a number of GB/s > 0")
        w = self.warmup_s
        require(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0,
                f"spinup.warmup_s={w!r} must be a number of seconds >= 0")


def spinup_s(weights_GB_per_gpu: float, cfg: SpinupConfig) -> float:
    """Seconds from start to serving for a replica holding ``weights_GB_per_gpu`` per GPU."""
    return weights_GB_per_gpu / cfg.load_GBps_per_gpu + cfg.warmup_s
