"""``python -m sim.steptime``: predicted time of one forward step and its four parts, as JSON.

Takes the same config groups as ``python -m sim`` (``hardware=``, ``model=``, ``engine=``,
``parallel.tp=``, ``parallel.pp=``, ``network.*``, ``precision.*``) plus ``batch.size``,
``batch.context_len``, ``batch.new_tokens`` or ``batch.phase=prefill batch.prompt_len=P``;
``queries=FILE.jsonl`` predicts one batch per line (each line a JSON object of batch fields);
a line may give the whole step as ``"sequences": [{"context_len": S, "new_tokens": T[, "sampled":
K]}, ...]`` (K positions with logits, default 1) (a prefill chunk mixed with decodes, batched prefill of unequal prompts) and its own
``"precision.weights"``.
With pipeline parallelism the step is one micro-batch through every stage including the
stage-to-stage sends. ``network_s`` is all of the step's communication time.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from sim.build import build_step_model
from sim.config.compose import compose_config
from sim.config.presets import check_group_choices
from sim.errors import ConfigError
from sim.policy.speculative import expected_tokens
from sim.spec.batch import BatchShape
from sim.tools.cli import fail, guarded, json_value, key_values

BATCH_FIELDS = {"size": 1, "context_len": 1024, "new_tokens": 1, "phase": "decode", "prompt_len": 1024}
#: fields of one entry of ``sequences`` (a mixed or batched-prefill step): cached tokens, tokens
#: it adds, positions whose logits are computed (default 1)
SEQUENCE_FIELDS = ("context_len", "new_tokens", "sampled")
#: per-query config fields (a query may change the weight format of its step)
QUERY_CONFIG = ("precision.weights",)


def sequences_batch(sequences: Any, where: str = "batch.sequences") -> BatchShape:
    """A step of arbitrary sequences: ``[{"context_len": S, "new_tokens": T[, "sampled": 0|1]}, ...]``
    (a prompt chunk, a decode, a verification pass of T tokens, in any mix)."""
    if not isinstance(sequences, list) or not sequences:
        raise ConfigError(f"{where}={sequences!r} must be a non-empty list of {{context_len, new_tokens[, sampled]}}")
    ctx, new, sampled = [], [], []
    for i, seq in enumerate(sequences):
        if not isinstance(seq, dict):
            raise ConfigError(f"{where}[{i}]={seq!r} must be a mapping with context_len and new_tokens")
        unknown = sorted(set(seq) - set(SEQUENCE_FIELDS))
        if unknown:
            raise ConfigError(f"{where}[{i}] has unknown field(s) {unknown}; allowed: {list(SEQUENCE_FIELDS)}")
        c, n, smp = seq.get("context_len", 0), seq.get("new_tokens"), seq.get("sampled", 1)
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ConfigError(f"{where}[{i}].context_len={c!r} must be an integer >= 0")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{where}[{i}].new_tokens={n!r} must be an integer >= 1")
        if isinstance(smp, bool) or not isinstance(smp, int) or not 0 <= smp <= n:
            raise ConfigError(f"{where}[{i}].sampled={smp!r} must be an integer from 0 to new_tokens={n} "
                              f"(positions whose logits are computed: 1 for a decode or a prompt's last chunk, "
                              f"0 for an earlier chunk, new_tokens for a speculative verification)")
        ctx.append(c)
        new.append(n)
        sampled.append(smp)
    return BatchShape.from_sequences(ctx, new, sampled)


def batch_from(values: dict[str, Any]) -> BatchShape:
    values = {k: v for k, v in values.items() if k not in QUERY_CONFIG}
    if "sequences" in values:
        other = sorted(set(values) - {"sequences"})
        if other:
            raise ConfigError(f"batch.sequences gives the whole step; drop {other}")
        return sequences_batch(values["sequences"])
    unknown = sorted(set(values) - set(BATCH_FIELDS))
    if unknown:
        raise ConfigError(f"batch has unknown field(s) {unknown}; allowed: {sorted(BATCH_FIELDS) + ['sequences']}")
    b = {**BATCH_FIELDS, **values}
    for k in ("size", "context_len", "new_tokens", "prompt_len"):
        if not isinstance(b[k], int) or isinstance(b[k], bool):
            raise ConfigError(f"batch.{k}={b[k]!r} must be an integer")
    if b["phase"] == "prefill":
        return BatchShape.prefill(b["prompt_len"], b["size"])
    if b["phase"] != "decode":
        raise ConfigError(f"batch.phase={b['phase']!r} is not one of ['decode', 'prefill']")
    return BatchShape.decode(b["size"], b["context_len"], b["new_tokens"])


def predict(cfg_map: dict[str, Any], batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    models: dict[Any, Any] = {}

    def model_for(values: dict[str, Any]):
        weights = values.get("precision.weights")
        if weights is not None and not isinstance(weights, str):
            raise ConfigError(f"precision.weights={weights!r} in a query must be a weight format name (e.g. \"fp8\")")
        if weights not in models:
            mapping = cfg_map if weights is None else {**cfg_map, "precision": {**cfg_map.get("precision", {}),
                                                                              "weights": weights}}
            models[weights] = build_step_model(mapping)
        return models[weights]

    out = []
    for values in batches:
        m = model_for(values)
        cfg, predictor, spec = m.cfg, m.predictor, m.spec
        batch = batch_from(values)
        b = {**BATCH_FIELDS, **values}
        row: dict[str, Any] = dict(values)
        if "sequences" in values:
            t = predictor.step(batch)
            tokens = batch.sampled_tokens
            # the forward pass as given (a verification pass is a sequence with sampled =
            # new_tokens; drafting is not added): positions with logits, not emitted tokens
            row.update({**t.as_dict(), "logit_positions": tokens, "new_tokens_total": batch.new_tokens,
                        "precision_weights": cfg.precision.weights, "hardware": cfg.hardware.name,
                        "model": cfg.model.name, "engine": cfg.engine.name, "tp": cfg.parallel.tp, "pp": cfg.parallel.pp,
                        "speculative": cfg.speculative.method})
            out.append(row)
            continue
        if cfg.speculative.enabled and b["phase"] == "decode" and b["new_tokens"] == 1:
            # one speculative pass: gamma draft steps + verification of gamma + 1 tokens
            gamma = spec.gamma_for(b["size"], b["context_len"])
            t = spec.pass_time(b["size"], b["context_len"], gamma)
            per_seq = expected_tokens(cfg.speculative.rates, gamma) if gamma else 1.0
            tokens = b["size"] * per_seq
            row.update({"gamma": gamma, "expected_tokens_per_pass": per_seq})
        else:
            t = predictor.step(batch)
            tokens = batch.sampled_tokens
        row.update({**t.as_dict(), "tokens_per_step": tokens,
                    "time_per_token_s": t.total_s / (tokens / b["size"]) if tokens else None,
                    "hardware": cfg.hardware.name, "model": cfg.model.name, "engine": cfg.engine.name,
                    "tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "speculative": cfg.speculative.method})
        out.append(row)
    return out


@guarded
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    batch: dict[str, Any] = {}
    queries = None
    overrides = []
    for key, value in key_values(argv):
        if key == "batch.sequences":     # JSON or YAML flow style: [{context_len: 0, new_tokens: 512}, ...]
            try:
                batch["sequences"] = yaml.safe_load(value)
            except yaml.YAMLError:
                fail(f"batch.sequences={value!r} is not a list of {{context_len, new_tokens}} mappings")
        elif key.startswith("batch."):
            batch[key[6:]] = json_value(value)
        elif key == "queries":
            queries = value
        else:
            overrides.append(f"{key}={value}")
    check_group_choices(overrides)
    cfg_map = compose_config(overrides)
    if queries:
        path = Path(queries)
        if not path.is_file():
            fail(f"queries={queries!r}: no such file")
        batches = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    fail(f"{path.name} line {lineno}: not valid JSON ({exc.msg})")
                if not isinstance(row, dict):
                    fail(f"{path.name} line {lineno}: expected a JSON object of batch fields")
                batches.append(row)
    else:
        batches = [batch]
    results = predict(cfg_map, batches)
    for r in results:
        print(json.dumps(r))
    return results
