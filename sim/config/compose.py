"""Compose ``conf/`` with command-line overrides outside a Hydra run (tools, tests, notebooks)."""
from __future__ import annotations

import re
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from sim.config.parse import group_fields, parse_config
from sim.config.presets import CONF_DIR
from sim.errors import ConfigError


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    """Hydra's compose over ``conf/``; inside a running Hydra app (whose search path is
    ``conf/`` too) without initializing it again."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def replacing_mappings(overrides: list[str]) -> list[str]:
    """``key={...}`` sets ``key`` to exactly that mapping: Hydra would merge it into the
    mapping already there (and refuse keys that mapping lacks, so that
    ``workload.prompt_tokens={dist: uniform, low: 1, high: 900}`` could not replace the
    default lognormal). Each such override becomes ``~key +key={...}``; sweeps and the rest
    are kept as given."""
    parser = OverridesParser.create()
    out: list[str] = []
    for text in overrides:
        try:
            o = parser.parse_override(text)
        except Exception:             # reported when the overrides are composed
            out.append(text)
            continue
        if o.type == OverrideType.CHANGE and not o.is_sweep_override() and isinstance(o.value(), dict):
            out += [f"~{o.key_or_group}", f"+{o.key_or_group}={o.get_value_element_as_str()}"]
        else:
            out.append(text)
    return out


def compose_config(overrides: list[str], config_name: str = "config") -> dict[str, Any]:
    """Compose ``conf/CONFIG_NAME.yaml`` with overrides (a mapping value replaces the mapping:
    :func:`replacing_mappings`), without a Hydra run directory."""
    try:
        cfg = _compose(config_name, replacing_mappings(overrides))
    except Exception as exc:  # Hydra's override/missing-preset errors, several lines: keep three
        raise ConfigError(_one_line(str(exc), config_name)) from None
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _one_line(message: str, config_name: str) -> str:
    """Hydra's error as one line; an override of a key the config lacks names the keys allowed
    at that level (instead of Hydra's advice to add it with ``+``)."""
    unknown = (re.match(r"Could not override '([^']+)'", message.strip())
               or re.match(r"Could not delete from config\. '([^']+)' does not exist", message.strip()))
    if unknown:
        key = unknown.group(1)
        path = key.split(".")
        level: Any = OmegaConf.to_container(_compose(config_name, []), resolve=False)
        depth = 0
        while depth < len(path) - 1 and isinstance(level, dict) and isinstance(level.get(path[depth]), dict):
            level = level[path[depth]]
            depth += 1
        keys = sorted(str(k) for k in level if k != "hydra") if isinstance(level, dict) else []
        if depth == 1:
            keys = group_fields(path[0]) or keys
        where = ".".join(path[:depth]) or "the top level"
        return f"{key} is not a config key; allowed at {where}: {keys}"
    return " ".join(line.strip() for line in message.strip().splitlines()[:3])


def check_overrides(argv: list[str], config_name: str = "config") -> None:
    """Compose (and for a run, validate) before a Hydra app runs, so that a bad override (a
    key the config lacks, a value of the wrong type) is one line instead of Hydra's multi-line
    report, and before any output directory exists. A sweep (``-m``) is checked value by
    value: every value of every swept key, the other keys at their first value, so a
    malformed value fails before the first job. ``hydra.*`` settings are left to Hydra."""
    overrides = [a for a in argv if "=" in a and not a.lstrip("+~").startswith(("hydra.", "hydra/"))
                 and not a.startswith("-")]
    if not any(a in ("-m", "--multirun") for a in argv):
        _check(overrides, config_name)
        return
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # a sweep that does not parse
        raise ConfigError(_one_line(str(exc), config_name)) from None
    base: list[str] = []
    swept: list[tuple[int, list[str]]] = []
    for text, o in zip(overrides, parsed):
        if not o.is_sweep_override():
            base.append(text)
            continue
        try:
            values = [str(v) for v in o.sweep_string_iterator()]
        except HydraException:      # glob(...) over presets: Hydra expands and checks it
            continue
        swept.append((len(base), values))
        base.append(f"{o.get_key_element()}={values[0]}" if values else text)
    _check(base, config_name)
    for i, values in swept:
        key = base[i].split("=", 1)[0]
        for v in values[1:]:
            _check([*base[:i], f"{key}={v}", *base[i + 1:]], config_name)


def _check(overrides: list[str], config_name: str) -> None:
    cfg = compose_config(overrides, config_name)
    if config_name == "config":
        parse_config(cfg)       # unknown keys (also added with +) and bad values


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's composed config as a plain mapping (one-line error for a bad interpolation)."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # interpolation errors from user overrides
        raise ConfigError(f"config could not be resolved: {str(exc).splitlines()[0]}") from None
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


#: Config groups whose preset a run can be told by name, and the field that names it.
_PRESET_KEYS = {"hardware": "name", "model": "name", "engine": "name", "topology": "kind", "disagg": "mode",
                "faults": "kind", "autoscale": "policy"}


def override_value(value: Any) -> str:
    """``value`` in Hydra's override grammar (YAML flow style for lists and mappings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z0-9_./-]+", text) else "'" + text.replace("'", "\\'") + "'"


def overrides_for(target: dict[str, Any], skip: tuple[str, ...] = ("output", "hydra")) -> list[str]:
    """The command-line overrides that make ``python -m sim`` compose ``target`` (a composed
    run config): a preset by name where a group's name field differs from the default
    (``hardware=h200``), then every value that differs from what that composes to."""
    base = compose_config([])
    choices: list[str] = []
    for group, key in _PRESET_KEYS.items():
        name = (target.get(group) or {}).get(key)
        if name is not None and name != (base.get(group) or {}).get(key) and (CONF_DIR / group / f"{name}.yaml").is_file():
            choices.append(f"{group}={name}")
    reference = compose_config(choices) if choices else base
    out = list(choices)

    def walk(prefix: str, ref: Any, tgt: Any) -> None:
        if isinstance(tgt, dict) and isinstance(ref, dict):
            for k, v in tgt.items():
                path = f"{prefix}.{k}" if prefix else str(k)
                if k not in ref:
                    out.append(f"+{path}={override_value(v)}")
                else:
                    walk(path, ref[k], v)
        elif tgt != ref:
            out.append(f"{prefix}={override_value(tgt)}")

    walk("", {k: v for k, v in reference.items() if k not in skip},
         {k: v for k, v in target.items() if k not in skip})
    return out
