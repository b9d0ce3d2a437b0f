"""The shape of one forward step's batch, reduced to the sums the cost model needs.

A step serves ``num_seqs`` sequences; sequence ``i`` already has ``context_i`` tokens in its
KV cache and adds ``new_i`` tokens (1 for decode, a prompt chunk for prefill, ``gamma + 1``
for speculative verification). The cost model only needs a handful of sums over
sequences, so a batch of thousands of sequences costs the same to predict as a batch of one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.errors import require

#: A token count: a number, or a numpy array of them when the analytic model evaluates many
#: batch sizes at once (``Any`` so that arithmetic on either type checks).
Count = Any

# Queries handled by one attention thread block (FlashAttention-style tiling).
ATTENTION_QUERY_BLOCK = 64


@dataclass(frozen=True)
class BatchShape:
    """Sums over the sequences of one step (all counts in tokens)."""

    num_seqs: Count
    new_tokens: Count
    kv_tokens_read: Count
    attention_pairs: Count
    sampled_tokens: Count
    query_blocks: Count

    def scaled(self, share: float) -> "BatchShape":
        """One GPU's part of the batch when ``1/share`` GPUs split its sequences evenly
        (data-parallel attention)."""
        return BatchShape(self.num_seqs * share, self.new_tokens * share, self.kv_tokens_read * share,
                          self.attention_pairs * share, self.sampled_tokens * share, self.query_blocks * share)

    def __add__(self, other: "BatchShape") -> "BatchShape":
        """The sequences of both batches in one step."""
        return BatchShape(self.num_seqs + other.num_seqs, self.new_tokens + other.new_tokens,
                          self.kv_tokens_read + other.kv_tokens_read, self.attention_pairs + other.attention_pairs,
                          self.sampled_tokens + other.sampled_tokens, self.query_blocks + other.query_blocks)

    @classmethod
    def uniform(cls, seqs, context_len: float, new_tokens: float, sampled: bool = True) -> "BatchShape":
        """``seqs`` alike sequences (a number or an array of batch sizes) at ``context_len``
        cached tokens, each adding ``new_tokens`` (all sampled, or one token each)."""
        b = np.asarray(seqs, dtype=np.float64)
        n = new_tokens
        return cls(b, b * n, b * (context_len + n), b * n * (context_len + (n + 1) / 2.0),
                   b * n if sampled else b, b * np.ceil(n / ATTENTION_QUERY_BLOCK))

    @classmethod
    def from_sequences(cls, context_len, new_tokens, sampled=None) -> "BatchShape":
        """Build from per-sequence arrays; ``sampled``: per sequence, the positions whose logits
        are computed this step (1/0 marks; a verification pass gives its token count).

        Sampled sequences need the LM head on each of their new tokens (decode and speculative
        verification); a prefill chunk that completes its prompt samples one token.
        """
        ctx = np.asarray(context_len, dtype=np.float64)
        new = np.asarray(new_tokens, dtype=np.float64)
        require(ctx.shape == new.shape, "batch context_len and new_tokens must have one value per sequence")
        require(bool(np.all(ctx >= 0)), "batch.context_len must be >= 0")
        require(bool(np.all(new >= 1)), "batch.new_tokens must be >= 1")
        if sampled is None:
            sampled_tokens = int(new.sum())
        else:
            sampled_tokens = int(np.asarray(sampled, dtype=np.int64).sum())
        return cls(
            num_seqs=int(ctx.size),
            new_tokens=int(new.sum()),
            kv_tokens_read=float((ctx + new).sum()),
            attention_pairs=float((new * (ctx + (new + 1.0) / 2.0)).sum()),
            sampled_tokens=sampled_tokens,
            query_blocks=int(np.ceil(new / ATTENTION_QUERY_BLOCK).sum()),
        )

    @classmethod
    def decode(cls, size: int, context_len: int, new_tokens: int = 1) -> "BatchShape":
        """``size`` sequences, each with ``context_len`` cached tokens, adding ``new_tokens``."""
        require(size >= 1, f"batch.size={size!r} must be >= 1")
        require(context_len >= 0, f"batch.context_len={context_len!r} must be >= 0")
        require(new_tokens >= 1, f"batch.new_tokens={new_tokens!r} must be >= 1")
        return cls.from_sequences(np.full(size, context_len), np.full(size, new_tokens))

    @classmethod
    def prefill(cls, prompt_len: int, size: int = 1) -> "BatchShape":
        """``size`` prompts of ``prompt_len`` tokens from an empty cache, one sampled token each."""
        require(prompt_len >= 1, f"batch.prompt_len={prompt_len!r} must be >= 1")
        require(size >= 1, f"batch.size={size!r} must be >= 1")
        return cls.from_sequences(np.zeros(size), np.full(size, prompt_len), np.ones(size))
