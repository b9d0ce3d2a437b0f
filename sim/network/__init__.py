"""The network behind one narrow interface (:class:`sim.network.interface.Network`).

Two fidelities implement it as SimPy processes: per collective (one event, alpha-beta along
the fabric's routes) and per message (every hop on FIFO links). Both take their numbers from
:class:`sim.cost.fabric.Fabric`, so they agree where nothing contends.
"""
