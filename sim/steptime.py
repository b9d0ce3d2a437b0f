"""``python -m sim.steptime``: predicted time of one forward step (:mod:`sim.tools.steptime`)."""
from sim.tools.steptime import main

if __name__ == "__main__":
    main()
