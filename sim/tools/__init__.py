"""Command-line tools: step time, sweeps and collection, frontier, calibration, validation,
procurement. Entry points keep their old names (``python -m sim.steptime`` ...) as thin
modules at the top of ``sim``. Tools use :mod:`sim.app` and :mod:`sim.build`, never the
SimPy processes of ``des`` directly.
"""
