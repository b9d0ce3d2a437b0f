"""Errors the simulator reports to users as one line.

Every user-facing failure (impossible parallelism, a model that does not fit, an unknown
preset, a malformed value) is raised as a :class:`ConfigError` whose message names the
field, the value and what is allowed. The command-line entry points catch it and print
that single line with a non-zero exit status instead of a traceback.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot describe a working cluster (one-line message)."""


class InvariantViolation(RuntimeError):
    """A run-time invariant failed (``debug.check_invariants``): a simulator bug, not bad input."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
