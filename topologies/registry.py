"""Build a topology by kind name: a plain dict from kind to builder function.

``build_topology("multi_node_ib", nodes=2)`` calls :func:`topologies.builders.multi_node_ib`.
Parameter names are checked against the builder's signature before the call, so a typo in
a config (``ib_latency=5``) fails with a message naming the parameter and the allowed ones
instead of a bare ``TypeError``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import networkx as nx

from topologies.builders import hgx_node, multi_node_ib, nvl72_rack, pcie_box
from topologies.contract import TopologyError
from topologies.io import load

__all__ = ["BUILDERS", "build_topology"]

#: kind -> builder. Read-only view; ``"file"`` loads a saved topology (parameter ``path``).
BUILDERS: Mapping[str, Callable[..., nx.DiGraph]] = MappingProxyType(
    {
        "hgx": hgx_node,
        "multi_node_ib": multi_node_ib,
        "pcie_box": pcie_box,
        "nvl72": nvl72_rack,
        "file": load,
    }
)


def build_topology(kind: str, **params: Any) -> nx.DiGraph:
    """Build (and validate) the topology ``kind`` with keyword ``params``."""
    try:
        builder = BUILDERS[kind]
    except (KeyError, TypeError):
        raise TopologyError(
            f"unknown topology kind {kind!r}; allowed: {', '.join(BUILDERS)}"
        ) from None
    signature = inspect.signature(builder)
    allowed = list(signature.parameters)
    for name in params:
        if name not in signature.parameters:
            raise TopologyError(
                f"topology {kind!r} has no parameter {name!r}; allowed: {', '.join(allowed)}"
            )
    missing = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.default is inspect.Parameter.empty and name not in params
    ]
    if missing:
        raise TopologyError(
            f"topology {kind!r} needs parameter {missing[0]!r}; allowed: {', '.join(allowed)}"
        )
    return builder(**params)
