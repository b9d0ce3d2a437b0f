"""The topologies package stays pure: importing it pulls in none of the simulator stack."""

import subprocess
import sys


def test_importing_topologies_does_not_import_sim_or_simpy():
    code = (
        "import sys, topologies, topologies.builders, topologies.paths, topologies.io, "
        "topologies.registry, topologies.contract\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sim', 'simpy', 'workloads', 'hydra', 'omegaconf'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
