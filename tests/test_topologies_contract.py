"""validate() errors and save/load round trips."""

import json

import networkx as nx
import pytest

from topologies import (
    TopologyError,
    build_topology,
    hgx_node,
    load,
    multi_node_ib,
    nvl72_rack,
    pcie_box,
    save,
    validate,
)


def _one_line(info):
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_reverse_edge_names_the_edge():
    graph = hgx_node(gpus=2)
    graph.remove_edge("nvswitch", "gpu1")
    with pytest.raises(TopologyError) as info:
        validate(graph)
    message = _one_line(info)
    assert "('gpu1', 'nvswitch')" in message and "no reverse edge" in message


def test_zero_bandwidth_names_edge_value_and_rule():
    graph = hgx_node(gpus=2)
    graph.edges["gpu0", "nvswitch"]["bandwidth_GBps"] = 0.0
    with pytest.raises(TopologyError) as info:
        validate(graph)
    message = _one_line(info)
    assert "('gpu0', 'nvswitch')" in message
    assert "bandwidth_GBps=0.0" in message and "> 0" in message


@pytest.mark.parametrize("attr, value", [("latency_us", -1.0), ("latency_us", float("nan")),
                                         ("latency_us", None), ("bandwidth_GBps", True)])
def test_bad_edge_numbers(attr, value):
    graph = pcie_box(gpus=2)
    graph.edges["cpu0", "pcie_switch0"][attr] = value
    with pytest.raises(TopologyError, match=r"\('cpu0', 'pcie_switch0'\)"):
        validate(graph)


def test_unknown_link_kind_names_the_edge():
    graph = hgx_node(gpus=2)
    graph.edges["nvswitch", "gpu0"]["link"] = "carrier_pigeon"
    with pytest.raises(TopologyError) as info:
        validate(graph)
    message = _one_line(info)
    assert "('nvswitch', 'gpu0')" in message and "'carrier_pigeon'" in message
    assert "infiniband" in message  # lists what is allowed


def test_unknown_node_kind_names_the_node():
    graph = hgx_node(gpus=2)
    graph.nodes["nvswitch"]["kind"] = "router"
    with pytest.raises(TopologyError) as info:
        validate(graph)
    message = _one_line(info)
    assert "'nvswitch'" in message and "'router'" in message and "ib_switch" in message


def test_non_contiguous_gpus():
    graph = hgx_node(gpus=3)
    graph.remove_node("gpu1")
    with pytest.raises(TopologyError, match="'gpu1' is missing"):
        validate(graph)


def test_gpu_index_must_match_server_and_rank():
    graph = hgx_node(gpus=2)
    graph.nodes["gpu1"]["local_rank"] = 0
    with pytest.raises(TopologyError, match="'gpu1'.*server\\*gpus_per_node\\+local_rank"):
        validate(graph)


def test_disconnected_gpus():
    graph = nx.DiGraph(name="two islands", gpus_per_node=1)
    for i in range(2):
        graph.add_node(f"gpu{i}", kind="gpu", server=i, local_rank=0)
        graph.add_node(f"nic{i}", kind="nic")
        graph.add_edge(f"gpu{i}", f"nic{i}", latency_us=1.0, bandwidth_GBps=1.0, link="pcie")
        graph.add_edge(f"nic{i}", f"gpu{i}", latency_us=1.0, bandwidth_GBps=1.0, link="pcie")
    with pytest.raises(TopologyError, match="'gpu0', 'gpu1'.*not connected"):
        validate(graph)


def test_graph_attributes_required():
    graph = hgx_node(gpus=2)
    del graph.graph["gpus_per_node"]
    with pytest.raises(TopologyError, match="gpus_per_node"):
        validate(graph)
    with pytest.raises(TopologyError, match="DiGraph"):
        validate(nx.Graph(hgx_node(gpus=2)))


def test_non_gpu_with_gpu_name_rejected():
    graph = hgx_node(gpus=2)
    graph.add_node("gpu7", kind="nic")
    with pytest.raises(TopologyError, match="'gpu7'.*reserved for GPUs"):
        validate(graph)


@pytest.mark.parametrize("builder", [
    lambda: hgx_node(),
    lambda: multi_node_ib(2, gpus_per_node=4),
    lambda: multi_node_ib(3, gpus_per_node=2, rail_optimized=False),
    lambda: pcie_box(gpus=6, gpus_per_switch=4),
    lambda: nvl72_rack(gpus=16),
])
def test_save_load_round_trip(tmp_path, builder):
    graph = builder()
    file = save(graph, tmp_path / "topo.json")
    loaded = load(file)
    assert loaded.graph == graph.graph
    assert list(loaded.nodes(data=True)) == list(graph.nodes(data=True))
    assert list(loaded.edges(data=True)) == list(graph.edges(data=True))
    assert nx.utils.graphs_equal(loaded, graph)
    # The file is networkx node-link data.
    via_nx = nx.node_link_graph(json.loads(file.read_text()), edges="edges")
    assert nx.utils.graphs_equal(via_nx, graph)
    # And the registry's "file" kind reads it.
    assert nx.utils.graphs_equal(build_topology("file", path=str(file)), graph)


def test_load_validates(tmp_path):
    graph = hgx_node(gpus=2)
    file = save(graph, tmp_path / "topo.json")
    data = json.loads(file.read_text())
    data["edges"] = [e for e in data["edges"] if not (e["source"] == "nvswitch" and e["target"] == "gpu0")]
    file.write_text(json.dumps(data))
    with pytest.raises(TopologyError) as info:
        load(file)
    message = _one_line(info)
    assert str(file) in message and "('gpu0', 'nvswitch')" in message


def test_load_errors(tmp_path):
    with pytest.raises(TopologyError, match="cannot be read"):
        load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TopologyError, match="not valid JSON"):
        load(bad)
    bad.write_text(json.dumps({"directed": True, "multigraph": False, "graph": {}}))
    with pytest.raises(TopologyError, match="malformed"):
        load(bad)


def test_save_refuses_invalid_graph(tmp_path):
    graph = hgx_node(gpus=2)
    graph.edges["gpu0", "nvswitch"]["latency_us"] = 0
    with pytest.raises(TopologyError):
        save(graph, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
