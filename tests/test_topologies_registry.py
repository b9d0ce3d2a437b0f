"""build_topology: dispatch and error messages."""

import networkx as nx
import pytest

from topologies import BUILDERS, TopologyError, build_topology, gpu_count, hgx_node


def test_each_kind_builds():
    assert gpu_count(build_topology("hgx", gpus=4)) == 4
    assert gpu_count(build_topology("multi_node_ib", nodes=2, gpus_per_node=2)) == 4
    assert gpu_count(build_topology("pcie_box", gpus=4)) == 4
    assert gpu_count(build_topology("nvl72")) == 72
    assert nx.utils.graphs_equal(build_topology("hgx"), hgx_node())
    assert set(BUILDERS) == {"hgx", "multi_node_ib", "pcie_box", "nvl72", "file"}


def test_unknown_kind_lists_allowed():
    with pytest.raises(TopologyError) as info:
        build_topology("dragonfly")
    message = str(info.value)
    assert "'dragonfly'" in message
    for kind in ("hgx", "multi_node_ib", "pcie_box", "nvl72", "file"):
        assert kind in message


def test_unknown_parameter_names_it_and_the_allowed_ones():
    with pytest.raises(TopologyError) as info:
        build_topology("multi_node_ib", nodes=2, ib_latency=5.0)
    message = str(info.value)
    assert "'ib_latency'" in message and "ib_latency_us" in message and "rail_optimized" in message


def test_missing_required_parameter():
    with pytest.raises(TopologyError, match="'multi_node_ib' needs parameter 'nodes'"):
        build_topology("multi_node_ib")
    with pytest.raises(TopologyError, match="'file' needs parameter 'path'"):
        build_topology("file")


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        BUILDERS["mine"] = hgx_node  # type: ignore[index]
