"""Transformer shape in Hugging Face config field names, and quantities derived from it.

Assumptions (Llama/Mistral/Qwen-style decoder): grouped-query attention with ``head_dim``
per head; a gated MLP (gate, up and down projections); RMSNorm (weights negligible);
untied or tied input embedding and LM head; Mixture-of-Experts replaces the MLP by
``num_local_experts`` gated MLPs of which ``num_experts_per_tok`` run per token, plus a
router matrix. Biases are ignored. Parameter counts, FLOPs and bytes per token, and KV
bytes per token are all derived from these fields, never typed in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, require

_HF_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "vocab_size", "tie_word_embeddings", "num_local_experts",
              "num_experts_per_tok", "max_position_embeddings")


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


def model_from_mapping(values: Mapping[str, Any]) -> ModelSpec:
    """Build a :class:`ModelSpec` from a config mapping; ``path`` loads a local HF config.json.

    With ``path`` (use the ``model=hf_config`` preset, whose shape fields are all null), the
    file's fields are read first and every non-null field of ``values`` overrides them, so
    ``model=hf_config model.path=/x/config.json model.num_hidden_layers=4`` works. A named
    preset combined with ``path`` is refused: its typed-in shape would silently win.
    """
    values = dict(values)
    path = values.pop("path", None)
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"model has unknown field(s) {unknown}; allowed: {sorted(known | {'path'})}")
    if path == "???":
        raise ConfigError("model=hf_config needs model.path=/path/to/config.json")
    if path:
        if values.get("name") not in (None, "hf_config"):
            raise ConfigError(f"model.path={str(path)!r} needs model=hf_config (the {values.get('name')} preset's "
                              f"fields would override the file); use: model=hf_config model.path=...")
        merged = load_hf_config(path)
        merged.setdefault("name", Path(str(path)).parent.name or "hf_model")
        merged.update({k: v for k, v in values.items() if v is not None and k != "name"})
    else:
        merged = {k: v for k, v in values.items() if v is not None}
    missing = [f.name for f in fields(ModelSpec) if f.name not in merged and f.default is _MISSING]
    if missing:
        raise ConfigError(f"model is missing field(s) {missing}")
    from .typecheck import check_types
    check_types(ModelSpec, merged, "model")
    return ModelSpec(**merged)


_MISSING = fields(ModelSpec)[1].default  # dataclasses.MISSING sentinel, read without importing it


def load_hf_config(path: str | Path) -> dict[str, Any]:
    """Read the shape fields of a local Hugging Face ``config.json`` (no download)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"model.path={str(path)!r}: no such config.json file")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model.path={str(path)!r}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"model.path={str(path)!r}: config.json must hold a JSON object, not {type(raw).__name__}")
    if "text_config" in raw and "hidden_size" not in raw:
        raw = raw["text_config"]
    out: dict[str, Any] = {}
    for key in _HF_FIELDS:
        if key in raw and raw[key] is not None:
            out[key] = raw[key]
    # Common aliases in HF configs.
    if "num_local_experts" not in out:
        for alias in ("num_experts", "n_routed_experts"):
            if raw.get(alias):
                out["num_local_experts"] = int(raw[alias])
    if "head_dim" not in out and "hidden_size" in out and "num_attention_heads" in out:
        out["head_dim"] = out["hidden_size"] // out["num_attention_heads"]
    if "num_key_value_heads" not in out and "num_attention_heads" in out:
        out["num_key_value_heads"] = out["num_attention_heads"]
    if out.get("num_local_experts", 1) > 1 and raw.get("moe_intermediate_size"):
        out["intermediate_size"] = int(raw["moe_intermediate_size"])
    if "_name_or_path" in raw and raw["_name_or_path"]:
        out["name"] = str(raw["_name_or_path"]).split("/")[-1]
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in required if k not in out]
    if missing:
        raise ConfigError(f"model.path={str(path)!r}: config.json lacks field(s) {missing}")
    return out


def with_overrides(model: ModelSpec, **changes: Any) -> ModelSpec:
    """A copy of ``model`` with some fields changed (validated again)."""
    return replace(model, **changes)
