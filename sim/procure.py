"""``python -m sim.procure``: the cheapest fleet meeting the SLOs (:mod:`sim.tools.procurement.cli`)."""
from sim.tools.procurement.cli import entry

if __name__ == "__main__":
    entry()
