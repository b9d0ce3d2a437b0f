"""Scalar-or-array helpers, so one cost function serves the per-step simulator (floats, fast)
and the vectorised analytic model (numpy arrays over batch sizes or contexts)."""
from __future__ import annotations

import numpy as np


def vmax(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return a if a >= b else b


def vmin(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.minimum(a, b)
    return a if a <= b else b


def vwhere(cond, a, b):
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    return a if cond else b
