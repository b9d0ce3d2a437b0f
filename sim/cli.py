"""Shared command-line plumbing: turn user errors into one line and a non-zero exit."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn

from .errors import ConfigError


def fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)


def guarded(fn: Callable) -> Callable:
    """Wrap an entry point so ConfigError (and workload/topology errors) print one line."""
    import functools

    from topologies import TopologyError
    from workloads import WorkloadError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, TopologyError, WorkloadError) as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return wrapper
