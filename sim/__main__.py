"""``python -m sim``: the simulator as a Hydra app (``-m`` for sweeps).

Writes ``requests.parquet``, ``steps.parquet``, ``summary.json`` and the resolved
``config.yaml`` into Hydra's run directory (``hydra.run.dir=DIR`` places it) and prints the
summary's headline numbers as one JSON line.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sim.app import run
from sim.config.compose import check_overrides, resolved
from sim.config.presets import check_group_choices
from sim.errors import ConfigError
from sim.tools.cli import guarded
from sim.tools.sweep import check_launcher
from topologies import TopologyError
from workloads import WorkloadError


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        # In a sweep an impossible point (e.g. a model that does not fit at tp=2) is recorded
        # in its job directory as error.txt and the sweep goes on.
        try:
            _run(cfg, out)
        except (ConfigError, TopologyError, WorkloadError) as exc:
            message = str(exc).splitlines()[0]
            (out / "error.txt").write_text(message + "\n")
            sys.stderr.write(f"error: {message}\n")
        return
    guarded(_run)(cfg, out)


def _run(cfg: DictConfig, out: Path) -> None:
    container = resolved(cfg)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    summary = run(container, out)
    headline = {k: summary[k] for k in ("requests", "ttft_s", "tpot_s", "throughput")}
    c = summary["cost"]
    headline["cost"] = {"model": c["model"], "gpus": c["gpus"], "usd_per_hour": c["usd_per_hour"],
                        "usd_per_million_output_tokens": c["usd_per_million_output_tokens"],
                        "joules_per_output_token": c["energy"]["joules_per_output_token"]}
    headline["run_dir"] = str(out)
    headline["sim"] = summary["sim"]
    print(json.dumps(headline))


if __name__ == "__main__":
    guarded(check_group_choices)(sys.argv[1:])
    guarded(check_launcher)(sys.argv[1:], os.environ)
    guarded(check_overrides)(sys.argv[1:])
    main()
