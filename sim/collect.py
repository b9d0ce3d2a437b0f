"""``python -m sim.collect SWEEP_DIR``: write ``SWEEP_DIR/sweep.parquet`` (see :mod:`sim.tools.sweep`)."""
from sim.tools.sweep import main

if __name__ == "__main__":
    main()
