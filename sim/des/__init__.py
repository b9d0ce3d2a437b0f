"""The discrete-event simulation: SimPy processes for the request source and the replicas.

The only package besides ``network`` that imports SimPy. Receives wired objects from
:mod:`sim.build` and never reads configuration.
"""
