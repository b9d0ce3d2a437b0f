"""Cost of renting or owning a fleet, and its energy, from simulated utilization (sim/cost/money.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.app import run
from sim.config.compose import compose_config
from sim.config.parse import cost_from_mapping, load_hardware
from sim.config.presets import load_preset
from sim.cost.money import CostConfig, FleetUse, energy, fleet_cost, gpu_hour_price
from sim.errors import ConfigError

H100 = load_hardware("h100")
REPO = Path(__file__).resolve().parent.parent
USE = FleetUse(gpus=8, nodes=1.0, network_ports=0, makespan_s=3600.0, gpu_busy_s=8 * 1800.0, output_tokens=1_000_000)


def test_energy_closed_form():
    c = CostConfig(pue=1.5, host_W_per_gpu={"default": 100.0})
    e = energy(c, H100, USE)
    it_J = 8 * (H100.idle_W + 100.0) * 3600.0 + (H100.tdp_W - H100.idle_W) * 8 * 1800.0
    assert e["joules"] == pytest.approx(1.5 * it_J)
    assert e["gpu_utilization"] == pytest.approx(0.5)
    assert e["joules_per_output_token"] == pytest.approx(1.5 * it_J / 1e6)
    assert e["avg_power_W"] == pytest.approx(1.5 * it_J / 3600.0)


def test_host_power_per_hardware():
    rent = cost_from_mapping(load_preset("cost", "rent"))
    assert rent.host_W("h100") == 575 and rent.host_W("rtx4090") == 83 and rent.host_W("l40s") == 575
    assert cost_from_mapping({"host_W_per_gpu": 50}).host_W("anything") == 50.0
    with pytest.raises(ConfigError, match="host_W_per_gpu.h100=-1"):
        cost_from_mapping({"host_W_per_gpu": {"h100": -1}})


def test_rent_and_own_closed_forms():
    rent = fleet_cost(CostConfig(pricing="on_demand"), H100, USE)
    assert rent["usd_per_hour"] == pytest.approx(8 * H100.usd_per_hour_on_demand)
    assert rent["usd_per_million_output_tokens"] == pytest.approx(8 * H100.usd_per_hour_on_demand)  # 1 h, 1 M tokens
    assert rent["usd_per_million_output_tokens_busy"] == pytest.approx(4 * H100.usd_per_hour_on_demand)
    own_cfg = CostConfig(model="own", purchase_usd_per_gpu={"h100": 30000.0}, server_usd_per_node={"h100": 77000.0},
                         depreciation_years=3.0, electricity_usd_per_kWh=0.1, pue=1.2)
    own = fleet_cost(own_cfg, H100, USE)
    capex_h = (8 * 30000.0 + 77000.0) / (3 * 365.25 * 24)
    assert own["capex_usd_per_hour"] == pytest.approx(capex_h)
    assert own["energy_usd_per_hour"] == pytest.approx(own["energy"]["avg_power_W"] / 1e3 * 0.1)
    assert own["usd_per_hour"] == pytest.approx(capex_h + own["energy_usd_per_hour"])


def test_pricing_choices_and_missing_figures_are_one_line_errors():
    rent = cost_from_mapping(load_preset("cost", "rent"))
    assert gpu_hour_price(rent, H100) == H100.usd_per_hour
    reserved = cost_from_mapping({**load_preset("cost", "rent"), "pricing": "reserved"})
    assert gpu_hour_price(reserved, H100) == 1.85
    with pytest.raises(ConfigError, match=r"cost.reserved_usd_per_gpu_hour.l40s is not set"):
        gpu_hour_price(reserved, load_hardware("l40s"))
    own = cost_from_mapping(load_preset("cost", "own"))
    with pytest.raises(ConfigError, match=r"cost.purchase_usd_per_gpu.mi300x is not set"):
        fleet_cost(own, load_hardware("mi300x"), USE)
    for bad, msg in (({"model": "lease"}, "cost.model='lease'"), ({"pue": 0.9}, "cost.pue=0.9"),
                     ({"purchase_usd_per_gpu": {"h100": -1}}, "purchase_usd_per_gpu.h100=-1"),
                     ({"colour": 1}, "unknown field")):
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(".", r"\.")):
            cost_from_mapping(bad)


def _run(tmp_path, name, overrides):
    return run(compose_config(["workload=synthetic", "workload.max_requests=60", "workload.prompt_tokens=256",
                               "workload.output_tokens=64", "model=llama3_8b", "parallel.tp=1",
                               "output.write_parquet=false", "output.progress=never", *overrides]), tmp_path / name)


@pytest.mark.parametrize("cost", ["rent", "own"])
def test_idle_heavy_run_costs_more_per_token_than_a_busy_one(tmp_path, cost):
    """Same fleet, same requests; arrivals 50x sparser leave the GPU mostly idle."""
    busy = _run(tmp_path, "busy", [f"cost={cost}", "workload.rate_per_s=20"])
    idle = _run(tmp_path, "idle", [f"cost={cost}", "workload.rate_per_s=0.4"])
    assert busy["throughput"]["output_tokens"] == idle["throughput"]["output_tokens"]
    b, i = busy["cost"], idle["cost"]
    assert i["energy"]["gpu_utilization"] < 0.5 * b["energy"]["gpu_utilization"]
    assert i["usd_per_million_output_tokens"] > 2 * b["usd_per_million_output_tokens"]
    assert i["energy"]["joules_per_output_token"] > 2 * b["energy"]["joules_per_output_token"]
    # the sparse run batches less, so it even spends more GPU time computing the same tokens
    assert i["busy_gpu_hours"] > b["busy_gpu_hours"]
    assert b["assumptions"]["model"] == cost and b["assumptions"]["sources"]


def test_cli_cost_group(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sim", "cost=own", "workload.max_requests=10", "output.progress=never",
                        f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "sim", "cost=lease", f"hydra.run.dir={tmp_path}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "cost='lease'" in r.stderr and "Traceback" not in r.stderr
