"""Transformer shape in Hugging Face config field names, and quantities derived from it.

Assumptions (Llama/Mistral/Qwen-style decoder): grouped-query attention with ``head_dim``
per head; a gated MLP (gate, up and down projections); RMSNorm (weights negligible);
untied or tied input embedding and LM head; Mixture-of-Experts replaces the MLP by
``num_local_experts`` gated MLPs of which ``num_experts_per_tok`` run per token, plus a
router matrix. Biases are ignored. Parameter counts, FLOPs and bytes per token, and KV
bytes per token are all derived from these fields, never typed in.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sim.errors import require


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape (Hugging Face ``config.json`` names)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    num_local_experts: int = 1
    num_experts_per_tok: int = 1
    max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "intermediate_size", "vocab_size", "num_local_experts", "num_experts_per_tok",
                  "max_position_embeddings"):
            value = getattr(self, f)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"model.{f}={value!r} must be a positive integer")
        require(self.num_attention_heads % self.num_key_value_heads == 0,
                f"model.num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}")
        require(self.num_experts_per_tok <= self.num_local_experts,
                f"model.num_experts_per_tok={self.num_experts_per_tok} exceeds num_local_experts={self.num_local_experts}")

    # ----- parameter counts -------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 1

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def attention_params_per_layer(self) -> int:
        h = self.hidden_size
        return h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h

    @property
    def expert_params(self) -> int:
        """One gated MLP: gate and up (h x ffn each) and down (ffn x h)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def mlp_params_per_layer(self) -> int:
        router = self.hidden_size * self.num_local_experts if self.is_moe else 0
        return self.num_local_experts * self.expert_params + router

    @property
    def norm_params_per_layer(self) -> int:
        return 2 * self.hidden_size

    @property
    def layer_params(self) -> int:
        return self.attention_params_per_layer + self.mlp_params_per_layer + self.norm_params_per_layer

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        """Total parameters (embeddings, all experts, final norm included)."""
        return (self.num_hidden_layers * self.layer_params + self.embedding_params + self.lm_head_params
                + self.hidden_size)

    @property
    def active_params_per_token(self) -> int:
        """Parameters that multiply each token: routed experts only, LM head, no embedding lookup."""
        active_mlp = self.num_experts_per_tok * self.expert_params + (
            self.hidden_size * self.num_local_experts if self.is_moe else 0)
        per_layer = self.attention_params_per_layer + active_mlp
        return self.num_hidden_layers * per_layer + self.vocab_size * self.hidden_size

    # ----- per-token quantities -----------------------------------------------------
    def kv_bytes_per_token(self, kv_bytes_per_element: float = 2.0) -> float:
        """K and V of every layer for one token position."""
        return 2.0 * self.num_hidden_layers * self.kv_dim * kv_bytes_per_element

    def flops_per_token(self, context_len: float = 0.0) -> float:
        """Forward FLOPs of one new token attending to ``context_len`` positions."""
        attention = 4.0 * self.num_hidden_layers * self.q_dim * context_len
        return 2.0 * self.active_params_per_token + attention

    def weight_bytes(self, bytes_per_element: float = 2.0) -> float:
        return self.params * bytes_per_element

    def summary(self, weight_bytes_per_element: float = 2.0, kv_bytes_per_element: float = 2.0) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params,
            "active_params_per_token": self.active_params_per_token,
            "weight_GB": self.weight_bytes(weight_bytes_per_element) / 1e9,
            "kv_bytes_per_token": self.kv_bytes_per_token(kv_bytes_per_element),
            "flops_per_token": self.flops_per_token(0.0),
        }


def with_overrides(model: ModelSpec, **changes: Any) -> ModelSpec:
    """A copy of ``model`` with some fields changed (validated again)."""
    return replace(model, **changes)
