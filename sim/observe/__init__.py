"""Observation apart from the model: table schemas, the column recorder, metrics.

Metrics are computed after a run from the tables, by the same functions notebooks import.
"""
