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
    # mixture of experts beyond Mixtral's shape (0: absent)
    moe_intermediate_size: int = 0   # each routed expert's FFN width (0: intermediate_size)
    n_shared_experts: int = 0        # experts every token runs besides its routed ones (DeepSeek)
    first_k_dense_replace: int = 0   # the first k layers have a dense MLP of intermediate_size (DeepSeek)
    # multi-head latent attention (DeepSeek-V2/V3; kv_lora_rank 0: grouped-query attention)
    kv_lora_rank: int = 0            # the compressed KV latent cached per token and layer
    q_lora_rank: int = 0             # the query's low-rank bottleneck (0: a full query projection)
    qk_nope_head_dim: int = 0        # per-head query/key dimensions without and with rotary embedding
    qk_rope_head_dim: int = 0        # (the rotary key part is shared by all heads and cached)
    v_head_dim: int = 0              # per-head value dimension

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
        for f in ("moe_intermediate_size", "n_shared_experts", "first_k_dense_replace", "kv_lora_rank", "q_lora_rank",
                  "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            value = getattr(self, f)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"model.{f}={value!r} must be an integer >= 0")
        require(self.first_k_dense_replace <= self.num_hidden_layers,
                f"model.first_k_dense_replace={self.first_k_dense_replace} exceeds num_hidden_layers={self.num_hidden_layers}")
        require(not self.is_mla or (self.qk_nope_head_dim + self.qk_rope_head_dim > 0 and self.v_head_dim > 0),
                f"model.kv_lora_rank={self.kv_lora_rank} (latent attention) needs qk_nope_head_dim, qk_rope_head_dim "
                f"and v_head_dim")

    # ----- parameter counts -------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 1

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention: a ``kv_lora_rank`` latent (plus the shared rotary key) is cached."""
        return self.kv_lora_rank > 0

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def kv_elements_per_layer(self) -> int:
        """Cached elements per token and layer: K and V of every KV head, or MLA's latent and rotary key."""
        return self.kv_lora_rank + self.qk_rope_head_dim if self.is_mla else 2 * self.kv_dim

    @property
    def attention_params_per_layer(self) -> int:
        h = self.hidden_size
        if self.is_mla:
            heads, qk = self.num_attention_heads, self.qk_nope_head_dim + self.qk_rope_head_dim
            q = h * self.q_lora_rank + self.q_lora_rank * heads * qk if self.q_lora_rank else h * heads * qk
            kv = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank * heads * (
                self.qk_nope_head_dim + self.v_head_dim)
            return q + kv + heads * self.v_head_dim * h
        return h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h

    @property
    def expert_ffn(self) -> int:
        """A routed (or shared) expert's FFN width."""
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def expert_params(self) -> int:
        """One gated MLP expert: gate and up (h x ffn each) and down (ffn x h)."""
        return 3 * self.hidden_size * self.expert_ffn

    @property
    def moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts (the first ``first_k_dense_replace`` are dense)."""
        return self.num_hidden_layers - self.first_k_dense_replace if self.is_moe else 0

    @property
    def dense_mlp_params(self) -> int:
        """A dense layer's gated MLP (width ``intermediate_size``)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def mlp_params_per_layer(self) -> int:
        """The MLP of a mixture-of-experts layer (every expert, shared ones and the router), or a dense one."""
        if not self.is_moe:
            return self.dense_mlp_params
        router = self.hidden_size * self.num_local_experts
        return (self.num_local_experts + self.n_shared_experts) * self.expert_params + router

    @property
    def norm_params_per_layer(self) -> int:
        return 2 * self.hidden_size

    @property
    def layer_params(self) -> int:
        """A mixture-of-experts layer's parameters (a dense model's layer)."""
        return self.attention_params_per_layer + self.mlp_params_per_layer + self.norm_params_per_layer

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        """Total parameters (embeddings, all experts, dense first layers, final norm included)."""
        dense = self.num_hidden_layers - self.moe_layers
        dense_layer = self.attention_params_per_layer + self.dense_mlp_params + self.norm_params_per_layer
        return (self.moe_layers * self.layer_params + dense * dense_layer + self.embedding_params
                + self.lm_head_params + self.hidden_size)

    @property
    def active_params_per_token(self) -> int:
        """Parameters that multiply each token: routed and shared experts, LM head, no embedding lookup."""
        active_moe = (self.num_experts_per_tok + self.n_shared_experts) * self.expert_params + (
            self.hidden_size * self.num_local_experts)
        dense = self.num_hidden_layers - self.moe_layers
        return (self.num_hidden_layers * self.attention_params_per_layer + self.moe_layers * active_moe
                + dense * self.dense_mlp_params + self.vocab_size * self.hidden_size)

    # ----- per-token quantities -----------------------------------------------------
    def kv_bytes_per_token(self, kv_bytes_per_element: float = 2.0) -> float:
        """The cache of every layer for one token position (K and V, or MLA's latent)."""
        return float(self.num_hidden_layers * self.kv_elements_per_layer) * kv_bytes_per_element

    def flops_per_token(self, context_len: float = 0.0) -> float:
        """Forward FLOPs of one new token attending to ``context_len`` positions."""
        per_pair = (2.0 * self.num_attention_heads * (self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim)
                    if self.is_mla else 4.0 * self.q_dim)
        attention = per_pair * self.num_hidden_layers * context_len
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
