#!/usr/bin/env python3
"""Measure step times of a simple PyTorch inference engine and write calibration JSONL.

Standalone: needs only PyTorch and the Python standard library (no imports from the
simulator, no downloads), so it can be copied alone to a GPU machine. The output has the
row format of ``shared/calibration/h100_pytorch_cudagraph.jsonl`` and is read by
``sim.calibration.read_measurements`` / ``python -m sim.calibrate data=FILE``.

What is built
    A Llama-style decoder with random weights (``--dtype``, bf16 by default): token
    embedding; per layer RMSNorm (computed in fp32), one fused QKV matmul, rotary embedding
    of q and k, write of the new tokens' K and V into a preallocated KV cache,
    ``torch.nn.functional.scaled_dot_product_attention`` with grouped-query attention
    (K/V heads are not repeated), output projection, residual add, RMSNorm, fused gate+up
    matmul, SiLU * up, down projection, residual add; final RMSNorm, LM head over the whole
    vocabulary, argmax. No biases, no fusion beyond what PyTorch does by itself.

What is measured (one JSON row per measurement)
    device      GPU name, SM count, memory, torch/CUDA versions, host, date
    copy_bw     device-to-device copy of ``--copy-bytes`` (bytes read + written)
    gemm_peak   ``--gemm-peak``^3 matmul in the model dtype (and fp8 via torch._scaled_mm
                on GPUs that support it)
    launch      ``--launch-kernels`` tiny kernels back to back, eager and in one CUDA graph
    gemm_sweep  [M,K] x [K,N] for M in ``--gemm-m`` (the roofline curve of one matmul)
    model       the shape of each measured model (L is the number of layers actually built)
    decode      one forward step: B sequences, each adding T new tokens on top of a KV cache
                of S positions (T > 1: a speculative-decoding verification pass; new tokens
                attend causally to each other, lower-right aligned). LM head over all B*T
                tokens.
    prefill     one forward pass over a prompt of P tokens (batch ``--prefill-batch``),
                causal attention, no cache; LM head over the last token of each prompt.
    step        the steps a continuous-batching scheduler forms besides those, as
                ``sequences`` of ``{context_len, new_tokens, sampled}`` (``python -m
                sim.steptime`` takes the same): a prompt chunk of C tokens mixed with B
                decodes at S cached tokens (``--mixed C:B:S``; all tokens go through each
                matmul together, each part attends to its own cache), and several prompts of
                unequal lengths prefilled together (``--ragged-prefill P+P+...``).

Modes and timing
    ``graph``: the step is captured once into a ``torch.cuda.CUDAGraph`` (after 3 warm-up
    runs on a side stream) and each timed call is one replay. ``eager``: each timed call
    runs the Python forward, launching every kernel from the host. On CUDA a call is timed
    with CUDA events recorded just before and after it, synchronizing after each call, so
    eager times include host launch gaps. On CPU (``--device cpu``; eager only, graph rows
    are replaced by one ``note`` row) calls are timed with ``time.perf_counter``. Every
    measurement runs ``--warmup`` untimed calls, then ``--repeats`` timed calls, and reports
    the median as ``ms`` together with ``min`` and ``max`` (milliseconds).

Decode/prefill cells that would not fit in free GPU memory are written as rows with
``"skipped": "memory"`` and no ``ms``; other skipped measurements as ``kind: skipped`` rows
(the reader ignores both). The simulator reads step and matmul rows as 2-byte weights and
activations: use bf16 or fp16 for calibration (``--dtype fp32`` is for testing the kit).

Example (one H100, about 10 minutes)::

    python kit/measure_steps.py --model llama-3.2-1b --model llama-3.1-8b --out h100_mine.jsonl
    python kit/measure_steps.py --shape name=mymodel,h=4096,L=32,nh=32,nkv=8,hd=128,ffn=14336,vocab=128256 \\
        --layers 8 --batch 1,16,64 --context 1024,4096 --new-tokens 1,4 --out mine.jsonl
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
from typing import Any, Callable

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - reported as a one-line error in main()
    torch = None  # type: ignore[assignment]
    F = None  # type: ignore[assignment]

# Public config values (no biases, no sliding window: a Llama-style stand-in of each model).
PRESETS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(h=2048, L=16, nh=32, nkv=8, hd=64, ffn=8192, vocab=128256, tie=1),
    "llama-3.2-3b": dict(h=3072, L=28, nh=24, nkv=8, hd=128, ffn=8192, vocab=128256, tie=1),
    "llama-3.1-8b": dict(h=4096, L=32, nh=32, nkv=8, hd=128, ffn=14336, vocab=128256, tie=0),
    "llama-3.1-70b": dict(h=8192, L=80, nh=64, nkv=8, hd=128, ffn=28672, vocab=128256, tie=0),
    "qwen2.5-0.5b": dict(h=896, L=24, nh=14, nkv=2, hd=64, ffn=4864, vocab=151936, tie=1),
    "qwen2.5-7b": dict(h=3584, L=28, nh=28, nkv=4, hd=128, ffn=18944, vocab=152064, tie=0),
    "qwen2.5-14b": dict(h=5120, L=48, nh=40, nkv=8, hd=128, ffn=13824, vocab=152064, tie=0),
    # A toy shape for testing the kit itself on a CPU.
    "tiny": dict(h=64, L=2, nh=4, nkv=2, hd=16, ffn=128, vocab=256, tie=0),
}
ALIASES = {"llama3_1b": "llama-3.2-1b", "llama3_3b": "llama-3.2-3b", "llama3_8b": "llama-3.1-8b",
           "llama3_70b": "llama-3.1-70b", "qwen2_5_0_5b": "qwen2.5-0.5b", "qwen2_5_7b": "qwen2.5-7b",
           "qwen2_5_14b": "qwen2.5-14b", "qwen_small": "qwen2.5-0.5b"}
SHAPE_FIELDS = ("name", "h", "L", "nh", "nkv", "hd", "ffn", "vocab", "tie")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
TWO_BYTE = ("bf16", "fp16")  # what the simulator's reader models; fp32 is for testing the kit
MiB = 1 << 20


class UsageError(Exception):
    """A bad command-line value; reported as one line by argparse."""


# --------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------
def _int_list(flag: str, text: str, minimum: int = 1) -> list[int]:
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            v = int(item)
        except ValueError:
            raise UsageError(f"{flag}: {item!r} is not an integer (expected a comma-separated list like 1,4,16)")
        if v < minimum:
            raise UsageError(f"{flag}: {v} must be >= {minimum}")
        out.append(v)
    if not out:
        raise UsageError(f"{flag}: empty list")
    return out


def _mixed_list(text: str) -> list[tuple[int, int, int]]:
    """``C:B:S,...`` -> [(chunk tokens, decodes, decode context)]."""
    out = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        try:
            c, b, ctx = (int(x) for x in parts)
        except ValueError:
            raise UsageError(f"--mixed: {item!r} is not CHUNK:DECODES:CONTEXT (three integers)") from None
        if c < 1 or b < 1 or ctx < 0:
            raise UsageError(f"--mixed: {item!r} needs CHUNK >= 1, DECODES >= 1, CONTEXT >= 0")
        out.append((c, b, ctx))
    return out


def _ragged_list(text: str) -> list[list[int]]:
    """``P+P+...,...`` -> [[prompt lengths]]."""
    out = []
    for item in filter(None, text.split(",")):
        try:
            lens = [int(x) for x in item.split("+")]
        except ValueError:
            raise UsageError(f"--ragged-prefill: {item!r} is not P+P+... (integers)") from None
        if not lens or min(lens) < 1:
            raise UsageError(f"--ragged-prefill: {item!r} needs prompt lengths >= 1")
        out.append(lens)
    return out


def parse_shape(text: str) -> dict[str, Any]:
    """``name=X,h=4096,L=32,nh=32,nkv=8,hd=128,ffn=14336,vocab=128256[,tie=0]`` -> dict."""
    shape: dict[str, Any] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise UsageError(f"--shape: {item.strip()!r} is not FIELD=VALUE (fields: {', '.join(SHAPE_FIELDS)})")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in SHAPE_FIELDS:
            raise UsageError(f"--shape: unknown field {key!r} (fields: {', '.join(SHAPE_FIELDS)})")
        if key == "name":
            if not value:
                raise UsageError("--shape: field 'name' is empty")
            shape[key] = value
            continue
        try:
            shape[key] = int(value)
        except ValueError:
            raise UsageError(f"--shape: field {key!r} must be an integer, got {value!r}") from None
        if key == "tie":
            if shape[key] not in (0, 1):
                raise UsageError(f"--shape: field 'tie' must be 0 or 1, got {value!r}")
        elif shape[key] < 1:
            raise UsageError(f"--shape: field {key!r} must be >= 1, got {value!r}")
    for key in ("h", "L", "nh", "nkv", "ffn", "vocab"):
        if key not in shape:
            raise UsageError(f"--shape: field {key!r} is missing (got {text!r})")
    if "hd" not in shape:
        if shape["h"] % shape["nh"]:
            raise UsageError(f"--shape: h={shape['h']} is not divisible by nh={shape['nh']}; give hd explicitly")
        shape["hd"] = shape["h"] // shape["nh"]
    if shape["nh"] % shape["nkv"]:
        raise UsageError(f"--shape: nh={shape['nh']} is not a multiple of nkv={shape['nkv']}")
    if shape["hd"] % 2:
        raise UsageError(f"--shape: field 'hd' must be even for rotary embedding, got {shape['hd']}")
    shape.setdefault("tie", 0)
    shape.setdefault("name", f"custom-h{shape['h']}-L{shape['L']}")
    return shape


def resolve_models(presets: list[str], shapes: list[str], layers: int | None) -> list[dict[str, Any]]:
    models = []
    for name in presets:
        key = ALIASES.get(name, name)
        if key not in PRESETS:
            raise UsageError(f"--model: unknown preset {name!r} (known: {', '.join(PRESETS)}; "
                             "or describe the shape with --shape)")
        models.append(dict(PRESETS[key], name=key))
    models += [parse_shape(s) for s in shapes]
    if not models:
        raise UsageError("give at least one --model PRESET or --shape h=...,L=...,... (or --no-models)")
    names = [m["name"] for m in models]
    if len(set(names)) != len(names):
        raise UsageError(f"model names must be distinct, got {names}")
    for m in models:
        m["L_full"] = m["L"]
        if layers is not None and layers < m["L"]:
            m["L"] = layers
            m["name"] = f"{m['name']}-L{layers}"
    return models


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is reported on one line (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        description="Measure decode/prefill step times and matmul rooflines of a random-weight "
                    "Llama-style decoder; write calibration JSONL for `python -m sim.calibrate`.")
    p.add_argument("--out", default="steps_measured.jsonl", help="output JSONL file (default %(default)s)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES),
                   help="weights, activations, KV cache (default bf16; the simulator models 2-byte formats)")
    p.add_argument("--model", action="append", default=[], metavar="PRESET",
                   help=f"model preset, repeatable: {', '.join(PRESETS)}")
    p.add_argument("--shape", action="append", default=[], metavar="SPEC",
                   help="custom model, repeatable: name=X,h=4096,L=32,nh=32,nkv=8,hd=128,ffn=14336,vocab=128256[,tie=1]")
    p.add_argument("--layers", type=str, default=None,
                   help="build only N layers of each model (recorded as L=N, name suffixed -LN)")
    p.add_argument("--no-models", action="store_true", help="skip decode/prefill (device, gemm rows only)")
    p.add_argument("--batch", default=None, help="decode batch sizes B (default 1,4,16,64,256,512; cpu 1,4)")
    p.add_argument("--context", default=None,
                   help="decode KV-cache lengths S (default 1024,4096,32768; cpu 64,256); cells that do not fit are skipped")
    p.add_argument("--new-tokens", default=None, help="new tokens per sequence T (default 1,4; cpu 1,4)")
    p.add_argument("--prompt", default=None, help="prefill prompt lengths P (default 128,512,2048,8192,32768: at the longest attention is 38-52 %% of the FLOPs, which separates its efficiency from the matmuls'; cpu 32,128)")
    p.add_argument("--prefill-batch", type=str, default="1", help="prompts per prefill pass (default 1)")
    p.add_argument("--mixed", default=None,
                   help="mixed steps CHUNK:DECODES:CONTEXT[,...]: a CHUNK-token prompt chunk with DECODES decodes at "
                        "CONTEXT cached tokens (default 512:16:4096,2048:64:4096,512:256:1024; cpu 32:4:64)")
    p.add_argument("--ragged-prefill", default=None,
                   help="batched prefill of unequal prompts P+P+...[,...] (default 128+512+1024,512+512+512+512; "
                        "cpu 16+48)")
    p.add_argument("--modes", default=None, help="graph,eager (default both on CUDA; eager on CPU)")
    p.add_argument("--warmup", type=str, default="5", help="untimed calls before timing (default 5)")
    p.add_argument("--repeats", type=str, default="20", help="timed calls; median is reported (default 20)")
    p.add_argument("--gemm-m", default=None, help="gemm_sweep M values (default 1,2,4,...,8192; cpu 1,8,64)")
    p.add_argument("--gemm-k", type=str, default=None, help="gemm_sweep K (default 4096; cpu 256)")
    p.add_argument("--gemm-n", type=str, default=None, help="gemm_sweep N (default 28672; cpu 512)")
    p.add_argument("--gemm-peak", type=str, default=None, help="gemm_peak size, 0 to skip (default 8192; cpu 256)")
    p.add_argument("--copy-bytes", type=str, default=None, help="copy_bw buffer bytes, 0 to skip (default 2 GiB; cpu 64 MiB)")
    p.add_argument("--launch-kernels", type=str, default="2000", help="kernels for the launch row, 0 to skip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _positive(flag: str, text: str, minimum: int = 1) -> int:
    """One integer >= ``minimum``."""
    values = _int_list(flag, text, minimum)
    if len(values) != 1:
        raise UsageError(f"{flag}: expected one integer, got {text!r}")
    return values[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        if torch is None:
            raise UsageError("PyTorch is not installed (pip install torch)")
        if a.device is None:
            a.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(a.device)
        except RuntimeError:
            raise UsageError(f"--device: {a.device!r} is not a device (use cuda, cuda:N or cpu)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device: CUDA is not available in this PyTorch build/machine; use --device cpu")
        if dev.type not in ("cuda", "cpu"):
            raise UsageError(f"--device: {a.device!r}: only cuda and cpu are supported")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        a.device = dev
        cpu = dev.type == "cpu"
        a.layers = None if a.layers is None else _positive("--layers", a.layers)
        a.models = [] if a.no_models else resolve_models(a.model, a.shape, a.layers)
        a.batch = _int_list("--batch", a.batch or ("1,4" if cpu else "1,4,16,64,256,512"))
        a.context = _int_list("--context", a.context or ("64,256" if cpu else "1024,4096,32768"), minimum=0)
        a.new_tokens = _int_list("--new-tokens", a.new_tokens or "1,4")
        a.prompt = _int_list("--prompt", a.prompt or ("32,128" if cpu else "128,512,2048,8192,32768"))
        a.prefill_batch = _positive("--prefill-batch", a.prefill_batch)
        # an empty value (--mixed= / --ragged-prefill=) measures none
        a.mixed = _mixed_list(("32:4:64" if cpu else "512:16:4096,2048:64:4096,512:256:1024")
                              if a.mixed is None else a.mixed)
        a.ragged_prefill = _ragged_list(("16+48" if cpu else "128+512+1024,512+512+512+512")
                                        if a.ragged_prefill is None else a.ragged_prefill)
        a.warmup = _positive("--warmup", a.warmup, minimum=0)
        a.repeats = _positive("--repeats", a.repeats)
        a.gemm_m = _int_list("--gemm-m", a.gemm_m or ("1,8,64" if cpu else ",".join(str(2 ** i) for i in range(14))))
        a.gemm_k = _positive("--gemm-k", a.gemm_k or ("256" if cpu else "4096"))
        a.gemm_n = _positive("--gemm-n", a.gemm_n or ("512" if cpu else "28672"))
        a.gemm_peak = _positive("--gemm-peak", a.gemm_peak or ("256" if cpu else "8192"), minimum=0)
        a.copy_bytes = _positive("--copy-bytes", a.copy_bytes or str(64 * MiB if cpu else 2048 * MiB), minimum=0)
        a.launch_kernels = _positive("--launch-kernels", a.launch_kernels, minimum=0)
        modes = (a.modes or ("eager" if cpu else "graph,eager")).split(",")
        for m in modes:
            if m not in ("graph", "eager"):
                raise UsageError(f"--modes: unknown mode {m!r} (graph, eager)")
        a.modes = modes
        a.torch_dtype = getattr(torch, DTYPES[a.dtype])
    except UsageError as exc:
        parser.error(str(exc))
    return a


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------
def param_count(m: dict[str, Any]) -> int:
    """Parameters as the simulator's ModelSpec counts them (embedding, LM head unless tied,
    2 norms per layer, final norm)."""
    h, q, kv = m["h"], m["nh"] * m["hd"], m["nkv"] * m["hd"]
    layer = h * (q + 2 * kv) + q * h + 3 * h * m["ffn"] + 2 * h
    return m["L"] * layer + m["vocab"] * h * (1 if m["tie"] else 2) + h


class Decoder:
    """Llama-style decoder with random weights; forward functions for decode and prefill."""

    def __init__(self, shape: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0):
        self.s = shape
        self.device, self.dtype = device, dtype
        h, nh, nkv, hd, ffn, vocab = (shape[k] for k in ("h", "nh", "nkv", "hd", "ffn", "vocab"))
        gen = torch.Generator(device=device).manual_seed(seed)

        def w(*size: int) -> torch.Tensor:
            t = torch.empty(*size, device=device, dtype=dtype)
            return t.normal_(0.0, 1.0 / math.sqrt(size[-1]), generator=gen)

        self.layers = []
        for _ in range(shape["L"]):
            self.layers.append(dict(
                ln1=torch.ones(h, device=device, dtype=dtype),
                wqkv=w((nh + 2 * nkv) * hd, h),
                wo=w(h, nh * hd),
                ln2=torch.ones(h, device=device, dtype=dtype),
                wgu=w(2 * ffn, h),
                wdown=w(h, ffn),
            ))
        self.embed = w(vocab, h)
        self.lm_head = self.embed if shape["tie"] else w(vocab, h)
        self.norm = torch.ones(h, device=device, dtype=dtype)
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        self.inv_freq = inv
        self.gqa = _sdpa_supports_gqa()
        self.mask_kind = self._probe_mask_kind()

    def _probe_mask_kind(self) -> str:
        """Pick how T > 1 decode steps mask attention: PyTorch's lower-right causal bias
        (dispatches to flash / memory-efficient kernels) if it runs here with this head
        layout and dtype, else a materialized boolean mask."""
        s = self.s
        q = torch.zeros(1, s["nh"], 2, s["hd"], device=self.device, dtype=self.dtype)
        kv = torch.zeros(1, s["nkv"], 5, s["hd"], device=self.device, dtype=self.dtype)
        try:
            from torch.nn.attention.bias import causal_lower_right
            self.attention(q, kv, kv, causal_lower_right(2, 5), False)
            _sync(self.device)
            return "causal_lower_right"
        except Exception:  # noqa: BLE001 - old PyTorch, or no kernel for this layout
            return "bool"

    def decode_mask(self, T: int, total: int) -> Any:
        """Mask letting new token i see all cached positions and new tokens 0..i."""
        if T == 1:
            return None
        if self.mask_kind == "causal_lower_right":
            from torch.nn.attention.bias import causal_lower_right
            return causal_lower_right(T, total)
        i = torch.arange(T, device=self.device).unsqueeze(1)
        j = torch.arange(total, device=self.device).unsqueeze(0)
        return j <= (total - T) + i

    # -- pieces ------------------------------------------------------------------------
    @staticmethod
    def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return xf.to(x.dtype) * weight

    def rotary(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, start + n, device=self.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    @staticmethod
    def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any,
                  causal: bool) -> torch.Tensor:
        if self.gqa:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        rep = q.shape[1] // k.shape[1]  # old PyTorch: repeat K/V heads (extra traffic)
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

    def layer(self, x: torch.Tensor, p: dict, cos: torch.Tensor, sin: torch.Tensor,
              cache: tuple[torch.Tensor, torch.Tensor] | None, start: int, mask: Any) -> torch.Tensor:
        s = self.s
        B, T, _ = x.shape
        nh, nkv, hd = s["nh"], s["nkv"], s["hd"]
        hn = self.rmsnorm(x, p["ln1"])
        qkv = F.linear(hn, p["wqkv"]).view(B, T, nh + 2 * nkv, hd).transpose(1, 2)
        q, k, v = qkv.split([nh, nkv, nkv], dim=1)
        q = self.apply_rotary(q, cos, sin)
        k = self.apply_rotary(k, cos, sin)
        if cache is not None:
            kc, vc = cache
            kc[:, :, start:start + T].copy_(k)
            vc[:, :, start:start + T].copy_(v)
            k, v = kc, vc
            causal = False
        else:
            v = v.contiguous()
            causal = True
        o = self.attention(q, k, v, mask, causal)
        x = x + F.linear(o.transpose(1, 2).reshape(B, T, nh * hd), p["wo"])
        hn = self.rmsnorm(x, p["ln2"])
        gate, up = F.linear(hn, p["wgu"]).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, p["wdown"])

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.rmsnorm(x, self.norm), self.lm_head).argmax(dim=-1)

    def ragged_layer(self, x: torch.Tensor, p: dict, segments: list[dict[str, Any]]) -> torch.Tensor:
        """One layer over the tokens of several segments at once (``x``: [tokens, h]): the
        matmuls, norms and MLP see every token together; each segment (``B`` sequences of ``T``
        tokens) applies its rotary, writes its cache and attends on its own."""
        s = self.s
        nh, nkv, hd = s["nh"], s["nkv"], s["hd"]
        qkv = F.linear(self.rmsnorm(x, p["ln1"]), p["wqkv"])
        outs = []
        for seg in segments:
            B, T = seg["B"], seg["T"]
            part = qkv[seg["rows"]].view(B, T, nh + 2 * nkv, hd).transpose(1, 2)
            q, k, v = part.split([nh, nkv, nkv], dim=1)
            q = self.apply_rotary(q, seg["cos"], seg["sin"])
            k = self.apply_rotary(k, seg["cos"], seg["sin"])
            if seg["cache"] is not None:
                kc, vc = seg["cache"]
                kc[:, :, seg["start"]:seg["start"] + T].copy_(k)
                vc[:, :, seg["start"]:seg["start"] + T].copy_(v)
                o = self.attention(q, kc, vc, seg["mask"], False)
            else:
                o = self.attention(q, k, v.contiguous(), None, True)
            outs.append(o.transpose(1, 2).reshape(B * T, nh * hd))
        x = x + F.linear(torch.cat(outs), p["wo"])
        gate, up = F.linear(self.rmsnorm(x, p["ln2"]), p["wgu"]).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, p["wdown"])

    def ragged_step(self, parts: list[tuple[int, int, int, bool]]) -> tuple[Callable[[], torch.Tensor], list]:
        """One step over ``parts`` = [(sequences B, new tokens T, cached positions S, sampled)]:
        a part with S > 0 or T == 1 writes and reads a KV cache of S + T positions (a decode or
        a later prompt chunk), one with S == 0 and T > 1 is a whole prompt (causal, no cache).
        LM head over the last token of each sampled sequence."""
        s = self.s
        segments, heads, keep, row = [], [], [], 0
        for B, T, S, sampled in parts:
            cos, sin = self.rotary(S, T)
            cache = None
            if S > 0 or T == 1:
                cache = (torch.zeros(B, s["nkv"], S + T, s["hd"], device=self.device, dtype=self.dtype),
                         torch.zeros(B, s["nkv"], S + T, s["hd"], device=self.device, dtype=self.dtype))
            segments.append(dict(rows=slice(row, row + B * T), B=B, T=T, start=S, cos=cos, sin=sin, cache=cache,
                                 mask=self.decode_mask(T, S + T)))
            if sampled:
                heads.extend(range(row + T - 1, row + B * T, T))
            row += B * T
        tokens = torch.randint(0, s["vocab"], (row,), device=self.device)
        head_rows = torch.tensor(heads, device=self.device, dtype=torch.long)
        caches = [[dict(seg, cache=None if seg["cache"] is None else tuple(t.clone() for t in seg["cache"]))
                   for seg in segments] for _ in self.layers]

        def step() -> torch.Tensor:
            x = self.embed[tokens]
            for p, segs in zip(self.layers, caches):
                x = self.ragged_layer(x, p, segs)
            return self.head(x[head_rows])

        keep += [tokens, head_rows, caches]
        return step, keep

    # -- steps -------------------------------------------------------------------------
    def decode_step(self, B: int, S: int, T: int) -> tuple[Callable[[], torch.Tensor], list]:
        """A closure running one decode step over a KV cache of S positions (+T new)."""
        s = self.s
        caches = [(torch.zeros(B, s["nkv"], S + T, s["hd"], device=self.device, dtype=self.dtype),
                   torch.zeros(B, s["nkv"], S + T, s["hd"], device=self.device, dtype=self.dtype))
                  for _ in range(s["L"])]
        tokens = torch.randint(0, s["vocab"], (B, T), device=self.device)
        cos, sin = self.rotary(S, T)
        mask = self.decode_mask(T, S + T)

        def step() -> torch.Tensor:
            x = self.embed[tokens]
            for p, cache in zip(self.layers, caches):
                x = self.layer(x, p, cos, sin, cache, S, mask)
            return self.head(x)

        return step, [caches, tokens, cos, sin, mask]

    def prefill_step(self, B: int, P: int) -> tuple[Callable[[], torch.Tensor], list]:
        tokens = torch.randint(0, self.s["vocab"], (B, P), device=self.device)
        cos, sin = self.rotary(0, P)

        def step() -> torch.Tensor:
            x = self.embed[tokens]
            for p in self.layers:
                x = self.layer(x, p, cos, sin, None, 0, None)
            return self.head(x[:, -1:])

        return step, [tokens, cos, sin]


def _sdpa_supports_gqa() -> bool:
    import inspect
    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtin without a signature: try it
        try:
            q = torch.zeros(1, 2, 1, 8)
            F.scaled_dot_product_attention(q, q[:, :1], q[:, :1], enable_gqa=True)
            return True
        except TypeError:
            return False


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median/min/max milliseconds of ``repeats`` calls after ``warmup`` untimed calls.

    CUDA: events recorded around each call, synchronize after each. CPU: perf_counter."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "min": min(times), "max": max(times)}


def capture_graph(fn: Callable[[], Any], device: torch.device) -> Callable[[], None]:
    """Warm up ``fn`` on a side stream, capture it into a CUDA graph, return ``replay``."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize(device)
    return graph.replay


def measure(fn: Callable[[], Any], mode: str, a: argparse.Namespace) -> dict[str, float]:
    if mode == "graph":
        fn = capture_graph(fn, a.device)
    with torch.no_grad():
        return time_calls(fn, a.device, a.warmup, a.repeats)


def _oom_types() -> tuple[type, ...]:
    types: list[type] = [MemoryError]
    if hasattr(torch.cuda, "OutOfMemoryError"):
        types.append(torch.cuda.OutOfMemoryError)
    return tuple(types)


def _free_cuda(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def fits(a: argparse.Namespace, nbytes: float) -> bool:
    """Whether ``nbytes`` (plus headroom) fits in free GPU memory; always True on CPU."""
    if a.device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(a.device)
    return nbytes * 1.2 + 512 * MiB < free


# --------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------
class Writer:
    def __init__(self, path: str, quiet: bool):
        self.f = open(path, "w")
        self.quiet = quiet
        self.count = 0

    def row(self, row: dict[str, Any]) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        self.count += 1
        if not self.quiet:
            brief = {k: v for k, v in row.items() if k not in ("min", "max")}
            print(json.dumps(brief, default=str)[:200], file=sys.stderr, flush=True)

    def close(self) -> None:
        self.f.close()


def device_row(a: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": "device"}
    if a.device.type == "cuda":
        props = torch.cuda.get_device_properties(a.device)
        row.update(name=props.name, sms=props.multi_processor_count, mem_gib=props.total_memory / 2 ** 30,
                   cc=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    else:
        row.update(name=platform.processor() or platform.machine() or "cpu", sms=None,
                   cpus=os.cpu_count(), threads=torch.get_num_threads())
    row.update(torch=torch.__version__, dtype=a.dtype, host=socket.gethostname(),
               date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               kit="kit/measure_steps.py", warmup=a.warmup, repeats=a.repeats)
    return row


def measure_copy(a: argparse.Namespace, out: Writer) -> None:
    n = a.copy_bytes
    if not n:
        return
    if not fits(a, 2 * n):
        out.row({"kind": "copy_bw", "bytes_moved": 2 * n, "skipped": "memory"})
        return
    src = torch.empty(n, dtype=torch.uint8, device=a.device).fill_(1)
    dst = torch.empty_like(src)
    mode = "graph" if "graph" in a.modes and a.device.type == "cuda" else "eager"
    r = measure(lambda: dst.copy_(src), mode, a)
    out.row({"kind": "copy_bw", "mode": mode, "bytes_moved": 2 * n, "ms": r["ms"], "min": r["min"],
             "TBps": 2 * n / (r["ms"] * 1e-3) / 1e12})


def measure_gemm_peak(a: argparse.Namespace, out: Writer) -> None:
    n = a.gemm_peak
    if not n:
        return
    mode = "graph" if "graph" in a.modes and a.device.type == "cuda" else "eager"
    x = torch.randn(n, n, device=a.device).to(a.torch_dtype)
    wt = torch.randn(n, n, device=a.device).to(a.torch_dtype)
    r = measure(lambda: torch.matmul(x, wt), mode, a)
    # The simulator models 2-byte (and narrower) formats only: an fp32 peak goes in a note.
    kind = "gemm_peak" if a.dtype in TWO_BYTE else "note"
    out.row({"kind": kind, "dtype": a.dtype, "mnk": n, "mode": mode, "ms": r["ms"], "min": r["min"],
             "TFLOPs": 2 * n ** 3 / (r["ms"] * 1e-3) / 1e12})
    if a.device.type == "cuda" and hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm"):
        try:
            if torch.cuda.get_device_capability(a.device) < (8, 9):
                raise RuntimeError("fp8 needs compute capability >= 8.9")
            x8 = x.to(torch.float8_e4m3fn)
            w8 = wt.to(torch.float8_e4m3fn).t()  # column-major second operand
            one = torch.ones((), device=a.device, dtype=torch.float32)
            r = measure(lambda: torch._scaled_mm(x8, w8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
                        mode, a)
            out.row({"kind": "gemm_peak", "dtype": "fp8", "mnk": n, "mode": mode, "ms": r["ms"], "min": r["min"],
                     "TFLOPs": 2 * n ** 3 / (r["ms"] * 1e-3) / 1e12})
        except Exception as exc:  # noqa: BLE001 - fp8 support varies by GPU and build
            out.row({"kind": "skipped", "of": "gemm_peak", "dtype": "fp8", "mnk": n,
                     "reason": f"{type(exc).__name__}: {exc}"[:200]})
    _free_cuda(a.device)


def measure_launch(a: argparse.Namespace, out: Writer) -> None:
    k = a.launch_kernels
    if not k:
        return
    t = torch.zeros(1, device=a.device)

    def many() -> None:
        for _ in range(k):
            t.add_(1.0)

    for mode in a.modes:
        if mode == "graph" and a.device.type != "cuda":
            continue
        r = measure(many, mode, a)
        out.row({"kind": "launch", "mode": mode, "kernels": k, "ms": r["ms"],
                 "us_per_kernel": r["ms"] * 1e3 / k})
    _free_cuda(a.device)


def measure_gemm_sweep(a: argparse.Namespace, out: Writer) -> None:
    K, N = a.gemm_k, a.gemm_n
    es = torch.empty((), dtype=a.torch_dtype).element_size()
    mode = "graph" if "graph" in a.modes and a.device.type == "cuda" else "eager"
    w = torch.randn(N, K, device=a.device).to(a.torch_dtype)
    for M in a.gemm_m:
        if not fits(a, (M * K + M * N) * es):
            out.row({"kind": "skipped", "of": "gemm_sweep", "M": M, "K": K, "N": N, "reason": "memory"})
            continue
        x = torch.randn(M, K, device=a.device).to(a.torch_dtype)
        r = measure(lambda x=x: F.linear(x, w), mode, a)
        sec = r["ms"] * 1e-3
        out.row({"kind": "gemm_sweep", "M": M, "K": K, "N": N, "mode": mode, "ms": r["ms"], "min": r["min"],
                 "max": r["max"], "TFLOPs": 2 * M * K * N / sec / 1e12,
                 "TBps": (K * N + M * K + M * N) * es / sec / 1e12})
    _free_cuda(a.device)


def model_row(m: dict[str, Any], es: int) -> dict[str, Any]:
    params = param_count(m)
    row = {"kind": "model", "model": m["name"], "h": m["h"], "L": m["L"], "nh": m["nh"], "nkv": m["nkv"],
           "hd": m["hd"], "ffn": m["ffn"], "vocab": m["vocab"], "params": params, "weight_GB": params * es / 1e9,
           "kv_bytes_per_token": 2 * m["L"] * m["nkv"] * m["hd"] * es, "tied": bool(m["tie"])}
    if m["L_full"] != m["L"]:
        row["L_full"] = m["L_full"]
    return row


def measure_model(m: dict[str, Any], a: argparse.Namespace, out: Writer) -> None:
    es = torch.empty((), dtype=a.torch_dtype).element_size()
    mrow = model_row(m, es)
    if not fits(a, mrow["weight_GB"] * 1e9):
        out.row(dict(mrow, skipped="memory"))
        return
    model = Decoder(m, a.device, a.torch_dtype, a.seed)
    out.row(dict(mrow, gqa_kernel=model.gqa, verify_mask=model.mask_kind))
    name, h, ffn, vocab = m["name"], m["h"], m["ffn"], m["vocab"]
    modes = [md for md in a.modes if md == "eager" or a.device.type == "cuda"]

    def act_bytes(tokens: int, last_tokens: int) -> float:  # rough activation footprint
        per_tok = (4 * h + 3 * ffn + (m["nh"] + 2 * m["nkv"]) * m["hd"]) * es + 3 * h * 4
        return tokens * per_tok * 2 + last_tokens * vocab * (es + 8)

    for B in a.batch:
        for S in a.context:
            for T in a.new_tokens:
                key = {"model": name, "B": B, "S": S, "T": T}
                kv = B * (S + T) * mrow["kv_bytes_per_token"]
                if not fits(a, kv + act_bytes(B * T, B * T)):
                    out.row(dict(kind="decode", **key, skipped="memory"))
                    continue
                try:
                    with torch.no_grad():
                        step, keep = model.decode_step(B, S, T)
                    for mode in modes:
                        r = measure(step, mode, a)
                        min_bytes = mrow["weight_GB"] * 1e9 + B * S * mrow["kv_bytes_per_token"]
                        out.row(dict(kind="decode", mode=mode, **key, **r, min_bytes=int(min_bytes),
                                     TBps_eff=min_bytes / (r["ms"] * 1e-3) / 1e12))
                    del step, keep
                except _oom_types():
                    out.row(dict(kind="decode", **key, skipped="memory"))
                _free_cuda(a.device)
    Bp = a.prefill_batch
    for P in a.prompt:
        key = {"model": name, "B": Bp, "P": P}
        if not fits(a, act_bytes(Bp * P, Bp)):
            out.row(dict(kind="prefill", **key, skipped="memory"))
            continue
        try:
            with torch.no_grad():
                step, keep = model.prefill_step(Bp, P)
            for mode in modes:
                r = measure(step, mode, a)
                out.row(dict(kind="prefill", mode=mode, **key, **r,
                             TFLOPs_linear=2 * mrow["params"] * Bp * P / (r["ms"] * 1e-3) / 1e12))
            del step, keep
        except _oom_types():
            out.row(dict(kind="prefill", **key, skipped="memory"))
        _free_cuda(a.device)
    for kind_steps in (
            [[(1, c, 0, False), (b, 1, ctx, True)] for c, b, ctx in a.mixed],
            [[(1, p, 0, True) for p in lens] for lens in a.ragged_prefill]):
        for parts in kind_steps:
            sequences = [{"context_len": S, "new_tokens": T, "sampled": int(smp)}
                         for B, T, S, smp in parts for _ in range(B)]
            key = {"model": name, "sequences": sequences}
            tokens = sum(B * T for B, T, _, _ in parts)
            kv = sum(B * (S + T) for B, T, S, _ in parts if S > 0 or T == 1) * mrow["kv_bytes_per_token"] * 2
            if not fits(a, kv + act_bytes(tokens, len(sequences))):
                out.row(dict(kind="step", **key, skipped="memory"))
                continue
            try:
                with torch.no_grad():
                    step, keep = model.ragged_step(parts)
                for mode in modes:
                    r = measure(step, mode, a)
                    out.row(dict(kind="step", mode=mode, **key, **r))
                del step, keep
            except _oom_types():
                out.row(dict(kind="step", **key, skipped="memory"))
            _free_cuda(a.device)
    del model
    _free_cuda(a.device)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    if a.device.type == "cuda":
        torch.cuda.set_device(a.device)
        torch.backends.cuda.matmul.allow_tf32 = True
    out = Writer(a.out, a.quiet)
    try:
        out.row(device_row(a))
        if a.device.type != "cuda" and "graph" in a.modes:
            out.row({"kind": "note", "text": "graph mode needs CUDA; only eager rows were measured"})
        with torch.no_grad():
            measure_copy(a, out)
            measure_gemm_peak(a, out)
            measure_launch(a, out)
            measure_gemm_sweep(a, out)
            for m in a.models:
                measure_model(m, a, out)
    finally:
        out.close()
    print(f"wrote {out.count} rows to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
