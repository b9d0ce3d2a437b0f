"""``python -m sim.validate``: predicted vs measured and published numbers (:mod:`sim.tools.validation.cli`)."""
from sim.tools.validation.cli import main

if __name__ == "__main__":
    main()
