"""``python -m sim``: the simulator as a Hydra app (``-m`` for sweeps).

Writes ``requests.parquet``, ``steps.parquet``, ``summary.json`` and the resolved
``config.yaml`` into Hydra's run directory (``hydra.run.dir=DIR`` places it) and prints the
summary's headline numbers as one JSON line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .app import run
from .cli import guarded


@hydra.main(version_base=None, config_path="../conf", config_name="config")
@guarded
def main(cfg: DictConfig) -> None:
    out = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # interpolation errors from user overrides
        from .errors import ConfigError
        raise ConfigError(f"config could not be resolved: {str(exc).splitlines()[0]}") from None
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    summary = run(container, out)
    headline = {k: summary[k] for k in ("requests", "ttft_s", "tpot_s", "throughput", "cost")}
    headline["run_dir"] = str(out)
    headline["sim"] = summary["sim"]
    print(json.dumps(headline))


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
