"""Shared command-line plumbing: turn user errors into one line and a non-zero exit."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn

from sim.errors import ConfigError, InvariantViolation


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
        except InvariantViolation as exc:
            fail(str(exc).splitlines()[0], code=4)
    return wrapper


def key_values(argv: list[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` arguments as pairs; anything else is a one-line error."""
    pairs = []
    for a in argv:
        if "=" not in a:
            fail(f"argument {a!r} is not KEY=VALUE")
        key, value = a.split("=", 1)
        pairs.append((key, value))
    return pairs


def json_value(value: str):
    """A command-line value as JSON (numbers, true/false, null) or else the plain string."""
    import json

    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def check_output_dirs(argv: list[str]) -> None:
    """``hydra.run.dir=DIR`` / ``hydra.sweep.dir=DIR`` must be a directory this process can
    write (created if missing): one line before Hydra starts, not a traceback from inside it."""
    import os
    import tempfile
    from pathlib import Path

    for a in argv:
        key, _, value = a.partition("=")
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or not value or "${" in value:
            continue
        try:
            Path(value).mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=value, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"{key}={value} cannot be written: {exc.strerror or exc}; choose a writable directory") from None
