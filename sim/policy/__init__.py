"""Pure decisions: continuous batching, KV-block accounting, routing, speculative decoding.

A policy returns a decision (a step plan, a replica index, a draft length); the SimPy
processes in ``des`` apply it. No SimPy, no configuration parsing, no I/O.
"""
