"""Paths, their costs, PathTable caching and scaled()."""

import math

import networkx as nx
import pytest

from topologies import (
    PathTable,
    TopologyError,
    hgx_node,
    multi_node_ib,
    path,
    path_bottleneck_GBps,
    path_latency_us,
    pcie_box,
    scaled,
)


def test_path_function_matches_path_table():
    graph = multi_node_ib(2, gpus_per_node=4)
    table = PathTable(graph)
    for a in ("gpu0", "gpu5"):
        for b in ("gpu1", "gpu4", "gpu6", "gpu7"):
            edges = path(graph, a, b)
            assert edges == table.edges(a, b)
            assert path_latency_us(graph, edges) == table.latency_us(a, b)
            assert path_bottleneck_GBps(graph, edges) == table.bottleneck_GBps(a, b)


def test_path_is_a_chain_of_existing_directed_edges():
    graph = pcie_box()
    edges = path(graph, "gpu1", "gpu6")
    assert edges[0][0] == "gpu1" and edges[-1][1] == "gpu6"
    for (_, v), (u, _) in zip(edges, edges[1:]):
        assert v == u
    assert all(graph.has_edge(*e) for e in edges)


def test_self_path_is_empty():
    graph = hgx_node(gpus=2)
    table = PathTable(graph)
    assert table.edges("gpu0", "gpu0") == ()
    assert table.latency_us("gpu0", "gpu0") == 0.0
    assert table.bottleneck_GBps("gpu0", "gpu0") == math.inf
    assert path(graph, "gpu1", "gpu1") == ()


def test_path_table_caches_routes():
    table = PathTable(hgx_node())
    assert table.route("gpu0", "gpu1") is table.route("gpu0", "gpu1")
    assert table.precompute() is table


def test_unknown_node_is_an_error():
    graph = hgx_node(gpus=2)
    with pytest.raises(TopologyError, match="'gpu9' is not in topology"):
        PathTable(graph).edges("gpu0", "gpu9")
    with pytest.raises(TopologyError, match="'gpu9' is not in topology"):
        path(graph, "gpu9", "gpu0")


def test_ties_break_by_fewest_hops():
    graph = hgx_node(gpus=2, nvlink_latency_us=2.0)
    # Add a one-hop direct link with exactly the same latency as the two-hop switch path.
    graph.add_edge("gpu0", "gpu1", latency_us=2.0, bandwidth_GBps=10.0, link="nvlink")
    graph.add_edge("gpu1", "gpu0", latency_us=2.0, bandwidth_GBps=10.0, link="nvlink")
    table = PathTable(graph)
    assert table.edges("gpu0", "gpu1") == (("gpu0", "gpu1"),)
    assert table.bottleneck_GBps("gpu0", "gpu1") == 10.0


def test_latency_comparison_is_exact_not_float_rounded():
    # Two hops of 1.0 and 0.75 ulp(1.0): the float sum rounds up to 1 + 2**-52, equal to
    # the direct edge, so float Dijkstra would call it a tie and take the 1-hop edge.
    # Exactly, the two-hop route is cheaper and must win.
    tiny, direct = 3 * 2.0**-54, 1.0 + 2.0**-52
    assert 1.0 + tiny == direct
    graph = nx.DiGraph(name="exact", gpus_per_node=2)
    graph.add_node("sw", kind="nvswitch")
    for i in range(2):
        graph.add_node(f"gpu{i}", kind="gpu", server=0, local_rank=i)
    for u, v, lat in [("gpu0", "sw", 1.0), ("sw", "gpu1", tiny), ("gpu0", "gpu1", direct)]:
        graph.add_edge(u, v, latency_us=lat, bandwidth_GBps=1.0, link="nvlink")
        graph.add_edge(v, u, latency_us=lat, bandwidth_GBps=1.0, link="nvlink")
    table = PathTable(graph)
    assert table.edges("gpu0", "gpu1") == (("gpu0", "sw"), ("sw", "gpu1"))
    assert table.edges("gpu1", "gpu0") == (("gpu1", "sw"), ("sw", "gpu0"))
    assert table.latency_us("gpu0", "gpu1") == table.latency_us("gpu1", "gpu0") == direct


@pytest.mark.parametrize("lat, bw", [(0.5, 2.0), (3.0, 0.25), (1.0, 1.0)])
def test_scaled_multiplies_every_edge_exactly(lat, bw):
    graph = multi_node_ib(2, gpus_per_node=2)
    result = scaled(graph, latency_scale=lat, bandwidth_scale=bw)
    assert result is not graph
    assert list(result.nodes(data=True)) == list(graph.nodes(data=True))
    assert result.graph == graph.graph
    for u, v, data in graph.edges(data=True):
        new = result.edges[u, v]
        assert new["latency_us"] == data["latency_us"] * lat
        assert new["bandwidth_GBps"] == data["bandwidth_GBps"] * bw
        assert new["link"] == data["link"]
    # The original is untouched.
    assert graph.edges["gpu0", "node0.nic0"]["latency_us"] == 1.0
    table, base = PathTable(result), PathTable(graph)
    assert table.latency_us("gpu0", "gpu2") == pytest.approx(lat * base.latency_us("gpu0", "gpu2"))
    assert table.bottleneck_GBps("gpu0", "gpu2") == bw * base.bottleneck_GBps("gpu0", "gpu2")


@pytest.mark.parametrize("kwargs", [{"latency_scale": 0}, {"bandwidth_scale": -1.0},
                                    {"latency_scale": float("inf")}])
def test_scaled_rejects_non_positive_scales(kwargs):
    with pytest.raises(TopologyError, match="must be a finite number > 0"):
        scaled(hgx_node(), **kwargs)
