"""``python -m sim.frontier``: the speed-cost frontier (:mod:`sim.tools.frontier`)."""
from sim.tools.frontier import main

if __name__ == "__main__":
    main()
