"""ModelSpec: parameter counts derived from the presets, per-token quantities, HF config loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.config.parse import load_hf_config, load_model, model_from_mapping
from sim.config.presets import preset_names
from sim.errors import ConfigError
from sim.spec.model import ModelSpec, with_overrides

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "h100_pytorch_cudagraph.jsonl"

# Public parameter counts (Hugging Face model cards / safetensors totals).
PUBLIC_PARAMS = {
    "llama3_8b": 8.03e9,
    "llama3_1_8b": 8.03e9,
    "llama3_70b": 70.55e9,
    "llama3_405b": 405.85e9,
    "llama3_2_1b": 1.236e9,      # tied embeddings
    "mixtral_8x22b": 140.6e9,    # all experts
    "qwen2_5_14b": 14.77e9,      # HF total (includes QKV biases the model ignores, ~0.3M)
    "qwen3_moe": 235e9,          # Qwen3-235B-A22B model card: 235B total (all 128 experts)
}

LLAMA3_8B_CONFIG = {
    "_name_or_path": "meta-llama/Meta-Llama-3-8B",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
}


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


def _write(tmp_path: Path, cfg, name: str = "config.json", sub: str = "my-model") -> Path:
    d = tmp_path / sub
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return p


# ----------------------------------------------------------------------------- presets
def test_every_model_preset_loads():
    names = preset_names("model")
    assert set(PUBLIC_PARAMS) <= set(names)
    for n in names:
        if n == "hf_config":  # needs model.path
            continue
        m = load_model(n)
        assert m.name == n
        assert m.params > 0


@pytest.mark.parametrize("name,public", sorted(PUBLIC_PARAMS.items()))
def test_total_params_match_public_numbers(name, public):
    m = load_model(name)
    assert m.params == pytest.approx(public, rel=0.01)


def test_tied_1b_params_exact_and_untied_would_be_larger():
    m = load_model("llama3_2_1b")
    assert m.tie_word_embeddings is True
    assert m.lm_head_params == 0
    assert m.params == pytest.approx(1.2358e9, rel=1e-3)
    untied = with_overrides(m, tie_word_embeddings=False)
    assert untied.params - m.params == m.vocab_size * m.hidden_size


def test_qwen3_moe_activates_about_22e9_of_235e9():
    """Qwen3-235B-A22B's model card: 235B parameters, 22B activated (8 of 128 experts per token,
    the embedding lookup counted there; our per-token count leaves the lookup out)."""
    m = load_model("qwen3_moe")
    assert m.is_moe and m.num_local_experts == 128 and m.num_experts_per_tok == 8
    assert m.params == pytest.approx(235e9, rel=0.005)
    assert m.active_params_per_token + m.embedding_params == pytest.approx(22e9, rel=0.02)


def test_mixtral_active_params_about_39e9():
    m = load_model("mixtral_8x22b")
    assert m.is_moe
    assert m.active_params_per_token == pytest.approx(39.0e9, rel=0.01)
    # total minus active: embedding, 6 idle experts per layer, norms
    idle = m.num_hidden_layers * (m.num_local_experts - m.num_experts_per_tok) * m.expert_params
    norms = m.num_hidden_layers * m.norm_params_per_layer + m.hidden_size
    assert m.params - m.active_params_per_token == m.embedding_params + idle + norms


@pytest.mark.parametrize("name", ["llama3_8b", "llama3_70b", "llama3_405b", "qwen2_5_14b"])
def test_dense_active_params_exclude_only_embedding_and_norms(name):
    m = load_model(name)
    assert not m.is_moe
    norms = m.num_hidden_layers * m.norm_params_per_layer + m.hidden_size
    assert m.params - m.active_params_per_token == m.embedding_params + norms


def test_llama3_8b_component_counts():
    m = load_model("llama3_8b")
    assert m.q_dim == 4096 and m.kv_dim == 1024
    assert m.attention_params_per_layer == 4096 * (4096 + 2 * 1024) + 4096 * 4096
    assert m.mlp_params_per_layer == 3 * 4096 * 14336
    assert m.params == 8_030_261_248


# ------------------------------------------------------------------ per-token quantities
@pytest.mark.parametrize("name", ["llama3_8b", "llama3_70b", "llama3_405b", "llama3_2_1b", "mixtral_8x22b",
                                  "qwen2_5_14b"])
@pytest.mark.parametrize("nbytes", [2.0, 1.0, 0.5])
def test_kv_bytes_per_token_formula(name, nbytes):
    m = load_model(name)
    expected = 2 * m.num_hidden_layers * m.num_key_value_heads * m.head_dim * nbytes
    assert m.kv_bytes_per_token(nbytes) == expected


def test_kv_bytes_known_values():
    assert load_model("llama3_8b").kv_bytes_per_token(2.0) == 131072
    assert load_model("llama3_8b").kv_bytes_per_token(1.0) == 65536
    assert load_model("llama3_70b").kv_bytes_per_token() == 327680
    assert load_model("llama3_2_1b").kv_bytes_per_token() == 32768


def _calibration_model_rows():
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    return {r["model"]: r for r in rows if r.get("kind") == "model"}


@pytest.mark.parametrize("preset,calib", [("llama3_2_1b", "llama-3.2-1b"), ("llama3_1_8b", "llama-3.1-8b"),
                                          ("qwen2_5_14b", "qwen2.5-14b")])
def test_presets_match_calibration_file_shapes(preset, calib):
    row = _calibration_model_rows()[calib]
    m = load_model(preset)
    assert (m.hidden_size, m.num_hidden_layers, m.num_attention_heads, m.num_key_value_heads, m.head_dim,
            m.intermediate_size, m.vocab_size) == (row["h"], row["L"], row["nh"], row["nkv"], row["hd"],
                                                   row["ffn"], row["vocab"])
    assert m.kv_bytes_per_token(2.0) == row["kv_bytes_per_token"]


def test_1b_params_match_calibration_file():
    row = _calibration_model_rows()["llama-3.2-1b"]
    assert load_model("llama3_2_1b").params == pytest.approx(row["params"], rel=1e-5)


@pytest.mark.parametrize("name", ["llama3_8b", "llama3_70b", "mixtral_8x22b", "llama3_2_1b"])
@pytest.mark.parametrize("ctx", [0, 1, 1000, 32768])
def test_flops_per_token_formula(name, ctx):
    m = load_model(name)
    expected = 2.0 * m.active_params_per_token + 4.0 * m.num_hidden_layers * m.q_dim * ctx
    assert m.flops_per_token(ctx) == pytest.approx(expected, rel=1e-12)


def test_flops_per_token_8b_magnitude():
    m = load_model("llama3_8b")
    assert m.flops_per_token(0) == pytest.approx(2 * 7.505e9, rel=1e-3)
    # attention at 8K context adds 4*32*4096*8192 = 4.3 GFLOP
    assert m.flops_per_token(8192) - m.flops_per_token(0) == pytest.approx(4.295e9, rel=1e-3)


def test_weight_bytes_and_summary():
    m = load_model("llama3_70b")
    assert m.weight_bytes(2.0) == 2 * m.params
    assert m.weight_bytes(1.0) == m.params
    s = m.summary()
    assert s["params"] == m.params
    assert s["weight_GB"] == pytest.approx(141.1, rel=1e-3)
    assert s["kv_bytes_per_token"] == 327680
    assert s["flops_per_token"] == m.flops_per_token(0.0)


# --------------------------------------------------------------------- validation
def test_kv_heads_must_divide_heads():
    with pytest.raises(ConfigError) as e:
        ModelSpec("bad", 4096, 32, 32, 5, 128, 14336, 128256)
    assert "num_key_value_heads" in _one_line(e.value)


@pytest.mark.parametrize("field,value", [("hidden_size", 0), ("num_hidden_layers", -1), ("vocab_size", 1.5),
                                         ("num_attention_heads", True), ("head_dim", "128")])
def test_shape_fields_must_be_positive_integers(field, value):
    kw = dict(name="x", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
              head_dim=128, intermediate_size=14336, vocab_size=128256)
    kw[field] = value
    with pytest.raises(ConfigError) as e:
        ModelSpec(**kw)
    assert f"model.{field}" in _one_line(e.value)


def test_experts_per_token_cannot_exceed_experts():
    with pytest.raises(ConfigError) as e:
        ModelSpec("x", 1024, 2, 8, 8, 128, 2048, 1000, num_local_experts=4, num_experts_per_tok=5)
    assert "num_experts_per_tok" in _one_line(e.value)


def test_with_overrides_revalidates():
    m = load_model("llama3_8b")
    small = with_overrides(m, num_hidden_layers=4)
    assert small.num_hidden_layers == 4
    assert small.params < m.params
    with pytest.raises(ConfigError):
        with_overrides(m, num_key_value_heads=5)


def test_model_from_mapping_unknown_and_missing_fields():
    with pytest.raises(ConfigError) as e:
        model_from_mapping({"name": "x", "hidden_sizes": 4096})
    assert "hidden_sizes" in _one_line(e.value)
    with pytest.raises(ConfigError) as e:
        model_from_mapping({"name": "x", "hidden_size": 4096})
    msg = _one_line(e.value)
    assert "missing" in msg and "num_hidden_layers" in msg


# ------------------------------------------------------------------- HF config.json
def test_load_hf_config_from_dir_and_file(tmp_path):
    p = _write(tmp_path, LLAMA3_8B_CONFIG)
    for where in (p, p.parent, str(p)):
        cfg = load_hf_config(where)
        assert cfg["hidden_size"] == 4096
        assert cfg["head_dim"] == 128            # derived hidden_size / heads
        assert cfg["num_key_value_heads"] == 8
        assert cfg["name"] == "Meta-Llama-3-8B"  # last component of _name_or_path
        assert "rope_theta" not in cfg and "architectures" not in cfg


def test_model_from_hf_config_matches_preset(tmp_path):
    p = _write(tmp_path, LLAMA3_8B_CONFIG)
    m = model_from_mapping({"path": str(p)})
    preset = load_model("llama3_8b")
    assert m.params == preset.params == 8_030_261_248
    assert m.kv_bytes_per_token() == 131072
    assert m.name == "Meta-Llama-3-8B"


def test_hf_config_defaults_kv_heads_and_name_from_dir(tmp_path):
    cfg = {k: v for k, v in LLAMA3_8B_CONFIG.items() if k not in ("_name_or_path", "num_key_value_heads")}
    p = _write(tmp_path, cfg, sub="local-mha")
    m = model_from_mapping({"path": str(p)})
    assert m.num_key_value_heads == m.num_attention_heads == 32   # MHA when absent
    assert m.name == "local-mha"


def test_hf_config_text_config_and_moe_aliases(tmp_path):
    inner = {"hidden_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 4,
             "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 64, "num_experts_per_tok": 8,
             "vocab_size": 1000}
    p = _write(tmp_path, {"model_type": "wrapper", "text_config": inner}, sub="moe")
    m = model_from_mapping({"path": str(p)})
    assert m.num_local_experts == 64 and m.num_experts_per_tok == 8
    assert m.intermediate_size == 6144 and m.moe_intermediate_size == m.expert_ffn == 768   # HF names kept
    assert m.head_dim == 128


def test_hf_config_value_used_for_fields_absent_from_file(tmp_path):
    cfg = {k: v for k, v in LLAMA3_8B_CONFIG.items() if k != "max_position_embeddings"}
    p = _write(tmp_path, cfg)
    m = model_from_mapping({"path": str(p), "max_position_embeddings": 4096, "name": "hf_config"})
    assert m.max_position_embeddings == 4096


def test_explicit_field_overrides_hf_config(tmp_path):
    p = _write(tmp_path, LLAMA3_8B_CONFIG)
    m = model_from_mapping({"path": str(p), "num_hidden_layers": 4})
    assert m.num_hidden_layers == 4


def test_hf_config_missing_file(tmp_path):
    for bad in (tmp_path / "nope" / "config.json", tmp_path):   # missing file; dir without config.json
        with pytest.raises(ConfigError) as e:
            load_hf_config(bad)
        msg = _one_line(e.value)
        assert "model.path" in msg and "no such" in msg
    with pytest.raises(ConfigError):
        model_from_mapping({"path": str(tmp_path / "nope.json")})


def test_hf_config_invalid_json(tmp_path):
    p = _write(tmp_path, '{"hidden_size": 4096,\n "num_hidden_layers": }')
    with pytest.raises(ConfigError) as e:
        load_hf_config(p)
    msg = _one_line(e.value)
    assert "not valid JSON" in msg and "line 2" in msg


def test_hf_config_lacking_required_fields(tmp_path):
    cfg = {k: v for k, v in LLAMA3_8B_CONFIG.items() if k != "vocab_size"}
    p = _write(tmp_path, cfg)
    with pytest.raises(ConfigError) as e:
        load_hf_config(p)
    assert "vocab_size" in _one_line(e.value)


def test_hf_config_kv_heads_not_dividing_heads(tmp_path):
    p = _write(tmp_path, {**LLAMA3_8B_CONFIG, "num_key_value_heads": 6})
    with pytest.raises(ConfigError) as e:
        model_from_mapping({"path": str(p)})
    assert "num_key_value_heads=6" in _one_line(e.value)


def test_hf_config_not_an_object_is_config_error(tmp_path):
    p = _write(tmp_path, "[1, 2, 3]")
    with pytest.raises(ConfigError):
        load_hf_config(p)


def test_named_preset_with_path_is_refused(tmp_path):
    """A named preset plus model.path would let the preset's shape silently win: refused."""
    p = _write(tmp_path, LLAMA3_8B_CONFIG)
    with pytest.raises(ConfigError, match="model=hf_config"):
        model_from_mapping({"path": str(p), "name": "llama3_70b", "num_hidden_layers": 80})
