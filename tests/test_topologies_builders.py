"""Builders: GPU counts, contract validity, and the documented latency/bandwidth contract."""

import itertools

import networkx as nx
import pytest

from topologies import (
    PathTable,
    TopologyError,
    gpu_count,
    gpu_nodes,
    hgx_node,
    multi_node_ib,
    nvl72_rack,
    pcie_box,
    validate,
)


def _pairs(graph):
    return itertools.permutations(gpu_nodes(graph), 2)


def test_hgx_node_defaults_every_pair_is_one_nvswitch_hop():
    graph = hgx_node()
    validate(graph)
    assert isinstance(graph, nx.DiGraph)
    assert gpu_count(graph) == 8
    assert gpu_nodes(graph) == [f"gpu{i}" for i in range(8)]
    assert graph.graph == {"name": "hgx_8gpu_nvlink", "gpus_per_node": 8}
    table = PathTable(graph)
    for a, b in _pairs(graph):
        assert table.edges(a, b) == ((a, "nvswitch"), ("nvswitch", b))
        assert table.latency_us(a, b) == pytest.approx(0.6, rel=1e-15)
        assert table.bottleneck_GBps(a, b) == 450.0
    assert {graph.edges[e]["link"] for e in graph.edges} == {"nvlink"}
    assert [graph.nodes[g]["local_rank"] for g in gpu_nodes(graph)] == list(range(8))


def test_hgx_node_infinity_fabric_and_custom_numbers():
    graph = hgx_node(gpus=4, nvlink_bandwidth_GBps=448.0, nvlink_latency_us=1.5, link="infinity_fabric")
    table = PathTable(graph)
    assert gpu_count(graph) == 4
    assert table.latency_us("gpu0", "gpu3") == 1.5
    assert table.bottleneck_GBps("gpu3", "gpu0") == 448.0
    assert {d["link"] for _, _, d in graph.edges(data=True)} == {"infinity_fabric"}


def test_hgx_node_fragment_for_composition():
    fragment = hgx_node(gpus=4, server=2, prefix="node2.")
    assert sorted(gpu_nodes(fragment)) == sorted(f"gpu{i}" for i in range(8, 12))
    assert "node2.nvswitch" in fragment
    assert fragment.nodes["gpu9"]["server"] == 2 and fragment.nodes["gpu9"]["local_rank"] == 1
    with pytest.raises(TopologyError, match="not contiguous"):
        validate(fragment)  # on its own a fragment is not a complete topology


@pytest.mark.parametrize("rail_optimized", [True, False])
def test_multi_node_ib_counts_and_validity(rail_optimized):
    graph = multi_node_ib(3, gpus_per_node=4, rail_optimized=rail_optimized)
    validate(graph)
    assert gpu_count(graph) == 12
    assert graph.graph["gpus_per_node"] == 4
    for i, gpu in enumerate(gpu_nodes(graph)):
        assert graph.nodes[gpu]["server"] == i // 4
        assert graph.nodes[gpu]["local_rank"] == i % 4
    kinds = nx.get_node_attributes(graph, "kind")
    assert sum(k == "nic" for k in kinds.values()) == 12
    assert sum(k == "ib_switch" for k in kinds.values()) == (4 + 1 if rail_optimized else 1)


@pytest.mark.parametrize("rail_optimized", [True, False])
def test_multi_node_ib_same_rail_cross_node(rail_optimized):
    graph = multi_node_ib(
        2, pcie_latency_us=1.0, ib_latency_us=5.0, pcie_bandwidth_GBps=64.0,
        ib_bandwidth_GBps=50.0, rail_optimized=rail_optimized,
    )
    table = PathTable(graph)
    for r in range(8):
        a, b = f"gpu{r}", f"gpu{8 + r}"
        assert table.latency_us(a, b) == pytest.approx(2 * 1.0 + 5.0, rel=1e-15)
        assert table.bottleneck_GBps(a, b) == min(50.0, 64.0)
        assert [graph.edges[e]["link"] for e in table.edges(a, b)] == [
            "pcie", "infiniband", "infiniband", "pcie",
        ]
    # Same node: still NVLink.
    assert table.latency_us("gpu8", "gpu15") == pytest.approx(0.6, rel=1e-15)
    assert table.bottleneck_GBps("gpu8", "gpu15") == 450.0


def test_multi_node_ib_bottleneck_is_pcie_when_slower():
    graph = multi_node_ib(2, gpus_per_node=2, pcie_bandwidth_GBps=32.0, ib_bandwidth_GBps=50.0,
                          pcie_latency_us=2.0, ib_latency_us=3.0)
    table = PathTable(graph)
    assert table.bottleneck_GBps("gpu0", "gpu2") == 32.0
    assert table.latency_us("gpu0", "gpu2") == pytest.approx(7.0, rel=1e-15)


def test_multi_node_ib_cross_rail_takes_one_nvlink_detour():
    graph = multi_node_ib(2)
    table = PathTable(graph)
    # gpu0 (node 0, rail 0) -> gpu9 (node 1, rail 1): nvlink + 2*pcie + ib = 7.6 us,
    # cheaper than the spine (2*pcie + 2*ib = 12 us).
    assert table.latency_us("gpu0", "gpu9") == pytest.approx(0.6 + 2.0 + 5.0, rel=1e-15)
    assert table.bottleneck_GBps("gpu0", "gpu9") == 50.0
    links = [graph.edges[e]["link"] for e in table.edges("gpu0", "gpu9")]
    assert sorted(links) == ["infiniband", "infiniband", "nvlink", "nvlink", "pcie", "pcie"]
    assert "spine" not in {u for u, _ in table.edges("gpu0", "gpu9")}


def test_multi_node_ib_cross_rail_uses_spine_when_nvlink_is_slow():
    graph = multi_node_ib(2, gpus_per_node=2, nvlink_latency_us=50.0)
    table = PathTable(graph)
    assert table.latency_us("gpu0", "gpu3") == pytest.approx(2 * 1.0 + 2 * 5.0, rel=1e-15)
    assert ("rail0", "spine") in table.edges("gpu0", "gpu3")
    # The spine carries the whole leaf (non-blocking): the NIC link stays the bottleneck.
    assert graph.edges["rail0", "spine"]["bandwidth_GBps"] == 2 * 50.0
    assert table.bottleneck_GBps("gpu0", "gpu3") == 50.0


def test_pcie_box_same_and_cross_switch():
    graph = pcie_box(gpus=8, pcie_bandwidth_GBps=32.0, pcie_latency_us=1.0, gpus_per_switch=4)
    validate(graph)
    assert gpu_count(graph) == 8
    assert graph.graph["gpus_per_node"] == 8
    table = PathTable(graph)
    for a, b in _pairs(graph):
        same_switch = int(a[3:]) // 4 == int(b[3:]) // 4
        assert table.latency_us(a, b) == (1.0 if same_switch else 2.0)
        assert table.hops(a, b) == (2 if same_switch else 4)
        assert table.bottleneck_GBps(a, b) == 32.0
    assert ("pcie_switch0", "cpu0") in table.edges("gpu0", "gpu7")
    assert {d["link"] for _, _, d in graph.edges(data=True)} == {"pcie"}


def test_pcie_box_uneven_switches():
    graph = pcie_box(gpus=5, gpus_per_switch=2)
    kinds = nx.get_node_attributes(graph, "kind")
    assert sorted(n for n, k in kinds.items() if k == "pcie_switch") == [
        "pcie_switch0", "pcie_switch1", "pcie_switch2",
    ]
    assert list(graph.successors("gpu4")) == ["pcie_switch2"]


def test_nvl72_rack():
    graph = nvl72_rack()
    assert gpu_count(graph) == 72
    assert graph.graph["gpus_per_node"] == 72
    table = PathTable(graph)
    assert table.latency_us("gpu0", "gpu71") == pytest.approx(0.6, rel=1e-15)
    assert table.bottleneck_GBps("gpu71", "gpu0") == 900.0


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: hgx_node(gpus=0), "gpus=0"),
        (lambda: hgx_node(gpus=2.5), "gpus=2.5"),
        (lambda: hgx_node(nvlink_latency_us=0.0), "nvlink_latency_us=0.0"),
        (lambda: hgx_node(nvlink_bandwidth_GBps=float("nan")), "nvlink_bandwidth_GBps=nan"),
        (lambda: hgx_node(link="copper"), "link='copper'"),
        (lambda: multi_node_ib(0), "nodes=0"),
        (lambda: multi_node_ib(2, ib_latency_us=-1.0), "ib_latency_us=-1.0"),
        (lambda: multi_node_ib(2, rail_optimized="yes"), "rail_optimized='yes'"),
        (lambda: pcie_box(gpus_per_switch=0), "gpus_per_switch=0"),
        (lambda: pcie_box(pcie_bandwidth_GBps=float("inf")), "pcie_bandwidth_GBps=inf"),
    ],
)
def test_builder_parameter_errors_name_the_parameter(call, fragment):
    with pytest.raises(TopologyError) as info:
        call()
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
