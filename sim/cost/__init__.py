"""Pure cost models: step time, collectives, the fabric of routes, the analytic model,
memory (KV capacity), placement of shards, money and energy.

Functions of value objects and numbers; no SimPy, no configuration parsing, no I/O.
May import ``spec`` (and ``config.schema`` for the run's type).
"""
