"""Load the named presets under ``conf/`` outside Hydra (for tools, tests and notebooks).

The Hydra apps compose the same YAML files; this module reads one preset file directly so
that pure cost-model code can be used without a Hydra run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sim.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def preset_names(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def load_preset(group: str, name: str, conf_dir: Path = CONF_DIR, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in _chain:
        raise ConfigError(f"{group}={_chain[0]!r}: its defaults loop back to {name!r} ({' -> '.join(_chain + (name,))})")
    path = conf_dir / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}={name!r} is not a known preset; allowed: {preset_names(group, conf_dir)}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(raw, dict):
        raise ConfigError(f"{group}={name!r}: {path.name} must hold a mapping")
    # a preset may build on others of its group, as Hydra composes it: ``defaults: [base, _self_]``
    bases = list(raw.pop("defaults", None) or [])
    merged: Any = OmegaConf.create({})
    for base in bases if "_self_" in bases else [*bases, "_self_"]:
        if base == "_self_":
            merged = OmegaConf.merge(merged, raw)
        elif isinstance(base, str) and base != name:
            merged = OmegaConf.merge(merged, load_preset(group, base, conf_dir, _chain + (name,)))
        else:
            raise ConfigError(f"{group}={name!r}: defaults entry {base!r} must name another {group} preset")
    data = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}


GROUPS = ("hardware", "model", "engine", "topology", "parallel", "network", "workload", "scheduler", "assumptions",
          "speculative", "cost")


def check_group_choices(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Reject ``group=name`` overrides naming a preset that does not exist (one line).

    Hydra reports these itself, over many lines; checking first keeps the one-line rule.
    Sweep lists (``group=a,b``) are checked element by element.
    """
    for arg in overrides:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS:
            continue
        for name in value.split(","):
            name = name.strip()
            if name and not (conf_dir / key / f"{name}.yaml").is_file():
                raise ConfigError(f"{key}={name!r} is not a known preset; allowed: {preset_names(key, conf_dir)}")
