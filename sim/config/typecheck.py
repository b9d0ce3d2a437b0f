"""Check config values against a dataclass's annotations, with one-line errors.

YAML and command-line overrides arrive as plain values (``seed=abc`` is a string); checking
them here turns what would be a traceback deep in numpy into
``seed='abc' must be an integer``.
"""
from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, Mapping

from sim.errors import ConfigError

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _accepts(tp: Any, value: Any) -> bool | None:
    """True/False if ``value`` fits type ``tp``; None when ``tp`` is not checked here."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        answers = [_accepts(t, value) for t in typing.get_args(tp)]
        if any(a is None for a in answers):
            return None
        return any(answers)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return None


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [("null" if t is type(None) else _describe(t)) for t in typing.get_args(tp)]
        return " or ".join(parts)
    return _NAMES.get(tp, str(tp))


def check_types(cls, values: Mapping[str, Any], group: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in values:
            ok = _accepts(hints.get(f.name, Any), values[f.name])
            if ok is False:
                raise ConfigError(f"{group}.{f.name}={values[f.name]!r} must be {_describe(hints[f.name])}")
