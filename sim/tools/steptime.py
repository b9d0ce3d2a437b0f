"""``python -m sim.steptime``: predicted time of one forward step and its four parts, as JSON.

Takes the same config groups as ``python -m sim`` (``hardware=``, ``model=``, ``engine=``,
``parallel.tp=``, ``parallel.pp=``, ``network.*``, ``precision.*``) plus ``batch.size``,
``batch.context_len``, ``batch.new_tokens`` or ``batch.phase=prefill batch.prompt_len=P``;
``queries=FILE.jsonl`` predicts one batch per line (each line a JSON object of batch fields).
With pipeline parallelism the step is one micro-batch through every stage including the
stage-to-stage sends. ``network_s`` is all of the step's communication time.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sim.build import build_step_model
from sim.config.compose import compose_config
from sim.config.presets import check_group_choices
from sim.errors import ConfigError
from sim.policy.speculative import expected_tokens
from sim.spec.batch import BatchShape
from sim.tools.cli import fail, guarded, json_value, key_values

BATCH_FIELDS = {"size": 1, "context_len": 1024, "new_tokens": 1, "phase": "decode", "prompt_len": 1024}


def batch_from(values: dict[str, Any]) -> BatchShape:
    unknown = sorted(set(values) - set(BATCH_FIELDS))
    if unknown:
        raise ConfigError(f"batch has unknown field(s) {unknown}; allowed: {sorted(BATCH_FIELDS)}")
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
    m = build_step_model(cfg_map)
    cfg, predictor, spec = m.cfg, m.predictor, m.spec
    out = []
    for values in batches:
        batch = batch_from(values)
        b = {**BATCH_FIELDS, **values}
        row: dict[str, Any] = dict(values)
        if cfg.speculative.enabled and b["phase"] == "decode" and b["new_tokens"] == 1:
            # one speculative pass: gamma draft steps + verification of gamma + 1 tokens
            gamma = spec.gamma_for(b["size"], b["context_len"])
            t = spec.pass_time(b["size"], b["context_len"], gamma)
            per_seq = expected_tokens(cfg.speculative.acceptance, gamma) if gamma else 1.0
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
        if key.startswith("batch."):
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
