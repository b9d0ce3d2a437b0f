"""How a serving engine uses the hardware: achieved efficiencies and fixed costs.

A profile is kept apart from the datasheet (:mod:`sim.spec.hardware`) so that one fitted on one
GPU transfers to another GPU by changing only the hardware preset. Every parameter is
physically meaningful and bounded: efficiencies are fractions of the datasheet peak (never
above 1), per-kernel costs are positive times.

Modelling assumptions (see ``docs``/README "Step-time model"):

* each operator's time is a *soft roofline* ``(t_compute^p + t_memory^p)^(1/p)``: ``p -> inf``
  is the hard roofline; finite ``p`` reproduces the gradual knee measured on real matmuls;
* matmuls run at ``compute_efficiency`` of the 16-bit peak, or at
  ``low_precision_compute_efficiency`` of the 8-/4-bit peak for fp8/int8/fp4 arithmetic (the
  measured 8192^3 matmul reaches 80 % of the bf16 but 74 % of the fp8 peak on H100);
* every kernel boundary costs ``kernel_overhead_us`` of GPU time (launch gap plus the ramp of a
  kernel that does not yet saturate memory); with CUDA graphs the host is out of the loop,
  in eager mode the host issues one kernel per ``host_launch_us`` and the GPU can never run
  ahead of it;
* decode attention streams the KV cache at a bandwidth that grows with the number of
  thread blocks it can keep busy (``attention_ctas_per_sm`` per SM for full bandwidth): one
  per query head and block of 64 queries, and with split-KV (FlashDecoding-style) kernels one
  more per ``attention_kv_split_tokens`` cached tokens (0: no split, as in plain SDPA);
* norms, residual adds, rotary and activation functions move, per token and layer,
  ``elementwise_bytes_per_hidden`` bytes per hidden unit (norms, residuals: replicated on
  every tensor-parallel rank), ``elementwise_bytes_per_qk`` per query and key column of the
  rank's shard (passes over q and k such as rotary) and ``elementwise_bytes_per_ffn`` per
  MLP column of the shard (activation function and gating);
* the serving engine around the model (``overheads``, zero for a bare model loop): every step
  costs ``step_overhead_us`` of host time (scheduling, input preparation, sampling launch)
  plus ``step_overhead_us_per_sequence`` per sequence in it (per-request bookkeeping,
  sampling and detokenisation grow with the batch) plus ``step_overhead_us_per_tp_rank`` per
  tensor-parallel rank beyond the first (the scheduler's output broadcast to, and the
  synchronisation of, one worker process per GPU); it is paid once per step, by the first
  pipeline stage. Every request pays ``request_overhead_us`` once before it reaches the
  scheduler (HTTP, tokenisation, and the first token's detokenisation and streaming): it is
  part of TTFT, not of any step;
* fp8/int8/fp4 matmuls run, besides the matmul, ``low_precision_kernels_per_layer`` extra
  kernels per layer (dynamic activation quantisation before each quantised matmul group: it
  reads the 16-bit activations and writes the 8-bit copy, ``low_precision_bytes_per_input``
  bytes per input element, and pays a kernel boundary);
* a speculative pass driven from Python (Hugging Face-style loops: candidate and tree
  bookkeeping, the acceptance check, compacting the accepted tokens' KV, updating the inputs)
  costs ``speculative_pass_overhead_us`` of host time per verification pass plus
  ``speculative_level_overhead_us`` per drafted level (top-k and tree expansion between draft
  forwards), beyond the draft and verification forwards themselves; engines that capture the
  loop in CUDA graphs leave both at 0;
* ``allreduce_algorithm=custom`` is vLLM's (and SGLang's) custom all-reduce
  (``csrc/custom_all_reduce.cuh``): inside one NVLink domain, one-shot (every rank reads every
  peer's whole buffer) for 2 ranks, for up to 4 ranks below 512 KB and up to 8 below 256 KB,
  else two-shot (reduce-scatter then all-gather through peer memory, ``2(n-1)/n`` of the
  buffer per rank); NCCL's ring above ``oneshot_max_bytes`` and on other than 2, 4, 6 or 8 GPUs. Peer-memory
  reads reach ``p2p_link_efficiency`` of the NVLink bandwidth (SGLang PR#2904's H100 table
  implies ~60 of 450 GB/s at 256 KB-512 KB).
"""
from __future__ import annotations

from dataclasses import dataclass

from sim.errors import require


@dataclass(frozen=True)
class EngineProfile:
    """Software behaviour of an inference engine (fitted or documented, see conf/engine/)."""

    name: str = "custom"
    cuda_graphs: bool = True
    hbm_efficiency: float = 0.85
    compute_efficiency: float = 0.75
    # Fraction of the 8-/4-bit peak that fp8/int8/fp4 matmuls reach (null: compute_efficiency).
    low_precision_compute_efficiency: float | None = None
    attention_compute_efficiency: float = 0.5
    roofline_sharpness: float = 3.0
    kernels_per_layer: float = 30.0
    kernels_per_step: float = 5.0
    kernel_overhead_us: float = 2.0
    host_launch_us: float = 0.0
    step_overhead_us: float = 0.0
    step_overhead_us_per_sequence: float = 0.0
    step_overhead_us_per_tp_rank: float = 0.0
    request_overhead_us: float = 0.0
    low_precision_kernels_per_layer: float = 0.0
    # Host time of a Python-driven speculative loop: per verification pass and per drafted level.
    speculative_pass_overhead_us: float = 0.0
    speculative_level_overhead_us: float = 0.0
    low_precision_bytes_per_input: float = 3.0
    attention_ctas_per_sm: float = 2.0
    attention_kv_split_tokens: float = 0.0
    elementwise_bytes_per_hidden: float = 40.0
    elementwise_bytes_per_qk: float = 0.0
    elementwise_bytes_per_ffn: float = 0.0
    lm_head_all_prompt_tokens: bool = False
    # Collectives, as the engine issues them.
    allreduce_algorithm: str = "auto"
    oneshot_max_bytes: float = 524288.0
    collective_software_us: float = 6.6
    # Fraction of the NVLink bandwidth the custom all-reduce's peer-memory reads reach (custom only).
    p2p_link_efficiency: float = 1.0
    network_overlap: float = 0.0
    # Memory the engine reserves.
    gpu_memory_utilization: float = 0.9
    activation_reserve_GB: float = 2.0

    def matmul_efficiency(self, compute_format: str) -> float:
        """Achieved fraction of the peak for matmuls in ``compute_format``."""
        low = compute_format in ("fp8", "int8", "fp4")
        return self.low_precision_compute_efficiency if low and self.low_precision_compute_efficiency else self.compute_efficiency

    def __post_init__(self) -> None:
        for f in ("hbm_efficiency", "compute_efficiency", "attention_compute_efficiency", "gpu_memory_utilization"):
            v = getattr(self, f)
            require(0.0 < v <= 1.0, f"engine.{f}={v!r} must be in (0, 1]: a fraction of the datasheet peak")
        lp = self.low_precision_compute_efficiency
        require(lp is None or 0.0 < lp <= 1.0,
                f"engine.low_precision_compute_efficiency={lp!r} must be null or in (0, 1]: a fraction of the 8-bit peak")
        require(0.0 <= self.network_overlap <= 1.0, f"engine.network_overlap={self.network_overlap!r} must be in [0, 1]")
        require(self.roofline_sharpness >= 1.0, f"engine.roofline_sharpness={self.roofline_sharpness!r} must be >= 1")
        require(0.0 < self.p2p_link_efficiency <= 1.0,
                f"engine.p2p_link_efficiency={self.p2p_link_efficiency!r} must be in (0, 1]: a fraction of the link bandwidth")
        for f in ("kernels_per_layer", "kernels_per_step", "kernel_overhead_us", "host_launch_us", "step_overhead_us",
                  "step_overhead_us_per_sequence", "step_overhead_us_per_tp_rank", "request_overhead_us",
                  "speculative_pass_overhead_us", "speculative_level_overhead_us",
                  "low_precision_kernels_per_layer", "low_precision_bytes_per_input", "collective_software_us", "activation_reserve_GB", "elementwise_bytes_per_hidden",
                  "elementwise_bytes_per_qk", "elementwise_bytes_per_ffn", "oneshot_max_bytes"):
            v = getattr(self, f)
            require(v >= 0.0, f"engine.{f}={v!r} must be >= 0")
        require(self.attention_kv_split_tokens >= 0,
                f"engine.attention_kv_split_tokens={self.attention_kv_split_tokens!r} must be >= 0 (0: no split-KV)")
        require(self.attention_ctas_per_sm > 0, f"engine.attention_ctas_per_sm={self.attention_ctas_per_sm!r} must be > 0")
        algorithms = ("auto", "ring", "oneshot", "nccl_model", "custom")
        require(self.allreduce_algorithm in algorithms,
                f"engine.allreduce_algorithm={self.allreduce_algorithm!r} is not one of {list(algorithms)}")


