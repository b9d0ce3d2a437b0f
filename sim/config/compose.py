"""Compose ``conf/`` with command-line overrides outside a Hydra run (tools, tests, notebooks)."""
from __future__ import annotations

from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from sim.config.presets import CONF_DIR
from sim.errors import ConfigError


def compose_config(overrides: list[str], config_name: str = "config") -> dict[str, Any]:
    """Compose ``conf/CONFIG_NAME.yaml`` with overrides, without a Hydra run directory."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name=config_name, overrides=overrides)
    except Exception as exc:  # Hydra's override/missing-preset errors, several lines: keep three
        raise ConfigError(" ".join(line.strip() for line in str(exc).strip().splitlines()[:3])) from None
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def check_overrides(argv: list[str], config_name: str = "config") -> None:
    """Compose once before a Hydra app runs, so that a bad override (a key the config lacks,
    a value of the wrong type) is one line instead of Hydra's multi-line report. Sweeps
    (``-m``) and ``hydra.*`` settings are left to Hydra."""
    if any(a in ("-m", "--multirun") for a in argv):
        return
    overrides = [a for a in argv if "=" in a and not a.lstrip("+~").startswith(("hydra.", "hydra/"))
                 and not a.startswith("-")]
    compose_config(overrides, config_name)


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's composed config as a plain mapping (one-line error for a bad interpolation)."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # interpolation errors from user overrides
        raise ConfigError(f"config could not be resolved: {str(exc).splitlines()[0]}") from None
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}
