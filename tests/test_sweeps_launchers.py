"""Sweeps at scale: the same ``-m`` sweep through Hydra's joblib and Ray launchers.

Rules:

* ``hydra/launcher=joblib`` (local processes) and ``hydra/launcher=ray`` (a local Ray
  instance the launcher starts) run the same sweep, and ``python -m sim.collect`` gives
  byte-identical ``sweep.parquet`` files: one row per job in job order, the overridden values
  and the metrics as columns, an impossible point kept as a row with ``error``;
* the run-to-run numbers (the summary's ``sim`` block: simulator wall time, events, events/s)
  are kept out of ``sweep.parquet`` and go to ``sweep_runtime.parquet``;
* ``hydra/launcher=ray_cluster`` takes the cluster's address from ``RAY_ADDRESS`` only; without
  it the sweep stops with one ``error:`` line and starts nothing (no local Ray instance);
* ``hydra/launcher=slurm`` composes to Hydra's submitit Slurm launcher with its fields from
  ``SIM_SLURM_*`` environment variables (no Slurm here, so only the composed config is checked).

Assumption: the launcher plugins are installed (the ``dev`` and ``sweeps`` extras).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sim.errors import ConfigError
from sim.tools.sweep import check_launcher

ROOT = Path(__file__).resolve().parent.parent

#: 3 jobs of well under a second each; tp=1 does not fit llama3_70b (the default model): an error row
SWEEP = ("parallel.tp=1,4,8", "workload.max_requests=20", "output.progress=never")


def _env(**extra: str) -> dict[str, str]:
    """This environment without Hydra's full-trace switch or a Ray cluster address, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def _py(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env or _env())


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """The same sweep run through joblib and through Ray (local), each collected."""
    root = tmp_path_factory.mktemp("launchers")
    out = {}
    for launcher in ("joblib", "ray"):
        sweep = root / launcher
        res = _py("sim", "-m", f"hydra/launcher={launcher}", *SWEEP, f"hydra.sweep.dir={sweep}")
        assert res.returncode == 0, res.stderr[-3000:]
        res = _py("sim.collect", str(sweep))
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout.strip().splitlines()[-1])["jobs"] == 3
        out[launcher] = sweep
    return out


def test_joblib_and_ray_give_identical_sweep_parquet(sweeps):
    joblib_file, ray_file = (sweeps[k] / "sweep.parquet" for k in ("joblib", "ray"))
    a, b = pq.read_table(joblib_file), pq.read_table(ray_file)
    assert a.schema.equals(b.schema, check_metadata=True)
    assert a.equals(b), "same sweep, same table, whichever launcher ran it"
    assert joblib_file.read_bytes() == ray_file.read_bytes()


def test_sweep_parquet_is_one_tidy_row_per_job(sweeps):
    table = pq.read_table(sweeps["ray"] / "sweep.parquet")
    rows = table.to_pylist()
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert [r["parallel.tp"] for r in rows] == [1, 4, 8]
    assert all(r["workload.max_requests"] == 20 and r["output.progress"] == "never" for r in rows)
    assert "does not fit" in rows[0]["error"] and rows[0]["ttft_p99_s"] is None
    for r in rows[1:]:
        assert r["error"] is None and r["requests_completed"] == 20
        assert r["ttft_p99_s"] > 0 and r["tpot_mean_s"] > 0 and r["throughput_output_tokens_per_s"] > 0
    assert rows[1]["cost_gpus"] == 4 and rows[2]["cost_gpus"] == 8
    assert not [c for c in table.column_names if c.startswith("sim_")], "run-to-run numbers stay out"


def test_runtime_numbers_go_to_their_own_file(sweeps):
    for sweep in sweeps.values():
        runtime = pq.read_table(sweep / "sweep_runtime.parquet").to_pylist()
        assert [r["job"] for r in runtime] == ["0", "1", "2"]
        assert [r["parallel.tp"] for r in runtime] == [1, 4, 8]
        assert runtime[0]["sim_wall_s"] is None, "the impossible point never ran"
        assert all(r["sim_wall_s"] > 0 and r["sim_events"] > 0 for r in runtime[1:])


#: a stand-in for an existing Ray cluster: a driver that starts Ray, prints its address and
#: keeps it up until its stdin closes
HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


def test_ray_cluster_runs_the_sweep_on_an_existing_cluster(sweeps, tmp_path):
    """``hydra/launcher=ray_cluster`` connects to the cluster at ``RAY_ADDRESS`` (no token auth here)."""
    env = _env(RAY_AUTH_MODE="disabled")
    head = subprocess.Popen([sys.executable, "-c", HEAD], cwd=tmp_path, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        address = head.stdout.readline().strip()
        assert address, "the stand-in Ray head did not start"
        sweep = tmp_path / "sweep"
        res = _py("sim", "-m", "hydra/launcher=ray_cluster", *SWEEP, f"hydra.sweep.dir={sweep}",
                  env={**env, "RAY_ADDRESS": address})
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"Connecting to existing Ray cluster at address: {address}" in res.stderr
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
    assert _py("sim.collect", str(sweep)).returncode == 0
    assert (sweep / "sweep.parquet").read_bytes() == (sweeps["joblib"] / "sweep.parquet").read_bytes()


def test_ray_cluster_without_an_address_is_one_line_and_starts_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    res = _py("sim", "-m", "hydra/launcher=ray_cluster", *SWEEP, f"hydra.sweep.dir={sweep}", timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hydra/launcher=ray_cluster needs the cluster's address")
    assert "RAY_ADDRESS" in lines[0] and "Traceback" not in res.stderr
    assert not sweep.exists()


def test_ray_cluster_takes_the_address_from_the_environment():
    res = _py("sim", "hydra/launcher=ray_cluster", "--cfg", "hydra", "-p", "hydra.launcher", "--resolve",
              env=_env(RAY_ADDRESS="ray://head.example:10001"), timeout=60)
    assert res.returncode == 0, res.stderr
    launcher = yaml.safe_load(res.stdout)
    assert launcher["_target_"].endswith("ray_launcher.RayLauncher")
    assert launcher["ray"]["init"]["address"] == "ray://head.example:10001"
    assert launcher["ray"]["init"]["object_store_memory"] is None, "ray.init refuses it for an existing cluster"


def test_check_launcher():
    check_launcher(["hydra/launcher=ray_cluster"], {"RAY_ADDRESS": "10.0.0.1:6379"})
    check_launcher(["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=ray://h:10001"], {})
    check_launcher(["hydra/launcher=ray", "hydra/launcher=joblib", "parallel.tp=8"], {"RAY_ADDRESS": ""})
    for environ in ({}, {"RAY_ADDRESS": ""}):
        with pytest.raises(ConfigError, match="RAY_ADDRESS"):
            check_launcher(["hydra/launcher=ray_cluster"], environ)
    with pytest.raises(ConfigError, match="use hydra/launcher=ray_cluster"):
        check_launcher(["hydra/launcher=ray"], {"RAY_ADDRESS": "10.0.0.1:6379"})
    with pytest.raises(ConfigError, match="use hydra/launcher=ray_cluster"):
        check_launcher(["hydra/launcher=ray", "hydra.launcher.ray.init.address=10.0.0.1:6379"], {})


def test_missing_plugin_is_one_line(monkeypatch):
    import sim.tools.sweep

    monkeypatch.setattr(sim.tools.sweep, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"hydra-ray-launcher plugin: pip install -e '\.\[sweeps\]'"):
        check_launcher(["hydra/launcher=ray"], {})


def test_slurm_launcher_composes_from_the_environment():
    env = _env(SIM_SLURM_PARTITION="cpu", SIM_SLURM_ACCOUNT="proj", SIM_SLURM_TIMEOUT_MIN="30")
    res = _py("sim", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher", "--resolve", env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    launcher = yaml.safe_load(res.stdout)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["account"], launcher["timeout_min"]) == ("cpu", "proj", 30)
    assert launcher["cpus_per_task"] == 1 and launcher["gpus_per_node"] is None
