"""Numeric formats: bytes per element and which tensor-core rate a matmul runs at.

Modelling assumption: weight-only quantisation to 4 bits (W4A16, e.g. AWQ/GPTQ kernels)
dequantises on the fly and multiplies at the 16-bit rate, while 8-bit weights (fp8 or
int8) are paired with 8-bit activations (W8A8) and run at the 8-bit tensor-core rate.
The KV cache format is independent of the weight format.
"""
from __future__ import annotations

from dataclasses import dataclass

from sim.errors import require

BYTES_PER_ELEMENT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "fp4": 0.5}
WEIGHT_FORMATS = ("bf16", "fp16", "fp8", "int8", "int4", "fp4")
KV_FORMATS = ("bf16", "fp16", "fp8", "int8", "int4")
# Format of the matmul arithmetic for each weight format ("auto" compute).
_AUTO_COMPUTE = {"bf16": "bf16", "fp16": "bf16", "fp8": "fp8", "int8": "int8", "int4": "bf16", "fp4": "fp4"}


@dataclass(frozen=True)
class Precision:
    """Storage formats of weights, KV cache and activations, and the matmul compute format."""

    weights: str = "bf16"
    kv_cache: str = "bf16"
    activations: str = "bf16"
    compute: str = "auto"

    def __post_init__(self) -> None:
        require(self.weights in WEIGHT_FORMATS, f"precision.weights={self.weights!r} is not one of {list(WEIGHT_FORMATS)}")
        require(self.kv_cache in KV_FORMATS, f"precision.kv_cache={self.kv_cache!r} is not one of {list(KV_FORMATS)}")
        require(self.activations in ("bf16", "fp16", "fp32"), f"precision.activations={self.activations!r} is not one of ['bf16', 'fp16', 'fp32']")
        allowed = ("auto",) + tuple(sorted(set(_AUTO_COMPUTE.values())))
        require(self.compute in allowed, f"precision.compute={self.compute!r} is not one of {list(allowed)}")

    @property
    def weight_bytes(self) -> float:
        return BYTES_PER_ELEMENT[self.weights]

    @property
    def kv_bytes(self) -> float:
        return BYTES_PER_ELEMENT[self.kv_cache]

    @property
    def activation_bytes(self) -> float:
        return BYTES_PER_ELEMENT[self.activations]

    @property
    def compute_format(self) -> str:
        return _AUTO_COMPUTE[self.weights] if self.compute == "auto" else self.compute
