"""``python -m sim``: the simulator as a Hydra app (``-m`` for sweeps).

Writes ``requests.parquet``, ``steps.parquet``, ``summary.json`` and the resolved
``config.yaml`` into Hydra's run directory (``hydra.run.dir=DIR`` places it) and prints the
summary's headline numbers as one JSON line.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sim.app import StopRequest, claim_run_dir, run
from sim.observe.recorder import use_returning_allocator, write_text
from sim.observe.report import human_summary
from sim.observe.runtime import keep_large_blocks_mapped
from sim.config.compose import check_overrides, replacing_mappings, resolved
from sim.config.presets import check_group_choices
from sim.errors import ConfigError
from sim.tools.cli import check_output_dirs, guarded
from sim.tools.sweep import FAILED_PREFIX, check_launcher
from topologies import TopologyError
from workloads import WorkloadError


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        # In a sweep an impossible point (e.g. a model that does not fit at tp=2) is recorded
        # in its job directory as error.txt and the sweep goes on. A job that fails otherwise
        # (its wall limit, a simulator bug) is recorded too and fails the sweep, which Hydra
        # reports after its last job; Ctrl-C and SIGTERM stop the whole sweep.
        try:
            _run(cfg, out)
        except (ConfigError, TopologyError, WorkloadError) as exc:
            message = str(exc).splitlines()[0]
            (out / "error.txt").write_text(message + "\n")
            sys.stderr.write(f"error: {message}\n")
        except SystemExit as exc:
            if exc.code != 3:                      # a signal: the user stops the sweep
                raise
            _job_failed(out, "stopped by sim.max_wall_s (partial outputs written)")
        except Exception as exc:
            _job_failed(out, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        return
    guarded(_run)(cfg, out)


def _job_failed(out: Path, message: str) -> None:
    """Record a sweep job that failed (not an impossible point): ``error.txt`` starting
    ``failed:``, which :class:`sim.tools.sweep.SweepFailures` counts after the last job."""
    (out / "error.txt").write_text(f"{FAILED_PREFIX} {message}\n")
    sys.stderr.write(f"error: sweep job {out.name} failed: {message}\n")


def _run(cfg: DictConfig, out: Path) -> None:
    container = resolved(cfg)
    claim_run_dir(out, bool(container["output"].get("overwrite", False)))
    write_text(OmegaConf.to_yaml(cfg, resolve=True), out / "config.yaml")
    stop = StopRequest()
    with stop_on_signals(stop):
        summary = run(container, out, stop)
    w = summary["workload"]
    if w["clamped_rows"]:
        sys.stderr.write(f"warning: {w['clamped_rows']} rows of {w['source']} had 0 prompt or output tokens and were "
                         f"read as 1 (summary.json workload.clamped_rows)\n")
    if not summary["complete"]:
        sys.stderr.write(f"stopped: {stop.message} at {summary['sim']['sim_time_s']:.1f} s simulated; "
                         f"{summary['requests']['completed']} of {summary['requests']['total']} requests completed; "
                         f"partial outputs (summary.json: complete=false) in {out}\n")
        raise SystemExit(stop.exit_code)
    headline = {k: summary[k] for k in ("requests", "ttft_s", "tpot_s", "throughput")}
    c = summary["cost"]
    headline["cost"] = {"model": c["model"], "gpus": c["gpus"], "usd_per_hour": c["usd_per_hour"],
                        "usd_per_million_output_tokens": c["usd_per_million_output_tokens"],
                        "joules_per_output_token": c["energy"]["joules_per_output_token"]}
    headline["run_dir"] = str(out)
    headline["sim"] = summary["sim"]
    if container["output"].get("format", "json") == "table":
        sys.stdout.write(human_summary(summary, str(out)))
    else:
        print(json.dumps(headline))
        sys.stdout.flush()
        sys.stderr.write(human_summary(summary, str(out)))


@contextmanager
def stop_on_signals(stop: StopRequest):
    """Ctrl-C (SIGINT) and SIGTERM ask the run to stop at the next event, so that what was
    simulated is written (exit 130 / 143); a second Ctrl-C stops at once."""
    def on_signal(signum, _frame):
        if signum == signal.SIGINT and stop.reason is not None:
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            stop.request("interrupt", 130, "interrupted (Ctrl-C)")
        else:
            stop.request("terminated", 143, "terminated (SIGTERM)")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    use_returning_allocator()
    keep_large_blocks_mapped()
    guarded(check_group_choices)(sys.argv[1:])
    guarded(check_launcher)(sys.argv[1:], os.environ)
    guarded(check_output_dirs)(sys.argv[1:])
    sys.argv[1:] = replacing_mappings(sys.argv[1:])      # key={...} sets exactly that mapping
    guarded(check_overrides)(sys.argv[1:])
    main()
