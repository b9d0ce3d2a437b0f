"""Shared test helpers: run the command-line tools, execute a notebook on small settings."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_sim(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root, with Hydra's own error switch unset."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def sweep_experiment(name: str, sweep_dir: Path):
    """``python -m sim -m +experiment=NAME`` into ``sweep_dir``, then ``python -m sim.collect``;
    the collected ``sweep.parquet`` as a pyarrow table."""
    import pyarrow.parquet as pq

    res = run_sim("-m", "sim", "-m", f"+experiment={name}", f"hydra.sweep.dir={sweep_dir}")
    assert res.returncode == 0, res.stderr
    res = run_sim("-m", "sim.collect", str(sweep_dir))
    assert res.returncode == 0, res.stderr
    return pq.read_table(sweep_dir / "sweep.parquet")


def execute_notebook(name: str, workdir: Path, monkeypatch, **env: str):
    """Copy ``notebooks/NAME.ipynb`` into ``workdir`` and run it top to bottom with
    ``SIM_QUICK=1`` (small settings); its figures land in ``workdir``. Returns the executed
    notebook (cells with outputs)."""
    import nbclient
    import nbformat

    shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", workdir / f"{name}.ipynb")
    monkeypatch.setenv("SIM_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(workdir / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def assert_equal_tables(a, b, what: str, rtol: float = 1e-9) -> None:
    """Two pyarrow tables are the same: schema and row count equal, floating-point columns
    within ``rtol`` relative (NaN equal to NaN), every other column exactly."""
    import numpy as np

    assert a.schema.equals(b.schema) and a.num_rows == b.num_rows, what
    for name in a.column_names:
        x = a.column(name).to_numpy(zero_copy_only=False)
        y = b.column(name).to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            assert np.allclose(x, y, rtol=rtol, atol=0.0, equal_nan=True), f"{what}.{name}"
        else:
            assert np.array_equal(x, y), f"{what}.{name}"


def assert_same_tables(run_a: Path, run_b: Path, rtol: float = 1e-9) -> None:
    """Two run directories hold the same ``requests.parquet`` and ``steps.parquet`` (steps
    ordered by replica and step: a fast-forwarded span writes its rows when it closes)."""
    import pyarrow.parquet as pq

    for name in ("requests", "steps"):
        a, b = (pq.read_table(d / f"{name}.parquet") for d in (run_a, run_b))
        if name == "steps":
            a, b = (t.sort_by([("replica", "ascending"), ("step", "ascending")]) for t in (a, b))
        assert_equal_tables(a, b, name, rtol)
