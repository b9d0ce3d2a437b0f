"""Save and load topologies as JSON in networkx's node-link format.

The file is exactly what ``networkx.node_link_data(graph, edges="edges")`` produces
(``{"directed": true, "multigraph": false, "graph": {...}, "nodes": [{"id": ..., ...}],
"edges": [{"source": ..., "target": ..., ...}]}``), written and read here without
``node_link_data`` so the format does not depend on the networkx version (its default key
for edges changed from ``"links"`` to ``"edges"``). Files with a ``"links"`` key are
read too. Node and edge order are preserved. Both directions validate the contract.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import networkx as nx

from topologies.contract import TopologyError, validate

__all__ = ["from_node_link", "load", "save", "to_node_link"]


def to_node_link(graph: nx.DiGraph) -> dict[str, Any]:
    """The node-link dict of a contract-valid ``graph`` (JSON-serialisable)."""
    validate(graph)
    return {
        "directed": True,
        "multigraph": False,
        "graph": dict(graph.graph),
        "nodes": [{**data, "id": node} for node, data in graph.nodes(data=True)],
        "edges": [{**data, "source": u, "target": v} for u, v, data in graph.edges(data=True)],
    }


def from_node_link(data: dict[str, Any], *, origin: str = "node-link data") -> nx.DiGraph:
    """Build and validate a DiGraph from a node-link dict (``origin`` names it in errors)."""
    if not isinstance(data, dict):
        raise TopologyError(f"{origin}: top level is {type(data).__name__}; must be a JSON object")
    if not data.get("directed", False) or data.get("multigraph", False):
        raise TopologyError(
            f"{origin}: directed={data.get('directed')!r}, multigraph={data.get('multigraph')!r}; "
            "must be directed=true, multigraph=false"
        )
    edges_key = "edges" if "edges" in data else "links"
    try:
        graph = nx.DiGraph(**data.get("graph", {}))
        for item in data["nodes"]:
            attrs = dict(item)
            graph.add_node(attrs.pop("id"), **attrs)
        for item in data[edges_key]:
            attrs = dict(item)
            graph.add_edge(attrs.pop("source"), attrs.pop("target"), **attrs)
    except (KeyError, TypeError) as exc:
        raise TopologyError(
            f"{origin}: malformed node-link data ({type(exc).__name__}: {exc}); need "
            "'nodes' with 'id' and 'edges' with 'source' and 'target'"
        ) from None
    try:
        return validate(graph)
    except TopologyError as exc:
        raise TopologyError(f"{origin}: {exc}") from None


def save(graph: nx.DiGraph, path: str | os.PathLike[str]) -> Path:
    """Validate ``graph`` and write it to ``path`` as node-link JSON; returns the path."""
    target = Path(path)
    target.write_text(json.dumps(to_node_link(graph), indent=1) + "\n", encoding="utf-8")
    return target


def load(path: str | os.PathLike[str]) -> nx.DiGraph:
    """Read a node-link JSON topology from ``path`` and validate it."""
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopologyError(f"topology file {str(source)!r} cannot be read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise TopologyError(f"topology file {str(source)!r} is not valid JSON: {exc}") from None
    return from_node_link(data, origin=f"topology file {str(source)!r}")
