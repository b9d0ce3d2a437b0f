"""``mypy`` is clean on ``sim/``, ``topologies/`` and ``workloads/`` (settings in pyproject.toml).

The plug points are typed: the network (:class:`sim.network.interface.Network`), the step
predictor (:class:`sim.cost.step_time.StepPredictor`) and speculation
(:class:`sim.policy.speculative.Speculation`) are Protocols the replica is annotated with, so
an implementation that drifts from them fails here.
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mypy_is_clean(tmp_path):
    api = pytest.importorskip("mypy.api")
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
                                      str(tmp_path / "cache"), str(ROOT / "sim"), str(ROOT / "topologies"),
                                      str(ROOT / "workloads")])
    assert status == 0, stdout[-4000:] + stderr[-2000:]
