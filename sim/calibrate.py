"""``python -m sim.calibrate``: fit an engine profile or links to measurements (:mod:`sim.tools.calibration.cli`)."""
from sim.tools.calibration.cli import main

if __name__ == "__main__":
    main()
