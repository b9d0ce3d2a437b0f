"""Property tests: random builder parameters give connected, symmetric, positive routes."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from topologies import PathTable, gpu_count, gpu_nodes, hgx_node, multi_node_ib, nvl72_rack, pcie_box

_lat = st.floats(min_value=1e-3, max_value=100.0, allow_nan=False, allow_infinity=False)
_bw = st.floats(min_value=1e-2, max_value=2000.0, allow_nan=False, allow_infinity=False)

_graphs = st.one_of(
    st.builds(hgx_node, gpus=st.integers(1, 8), nvlink_bandwidth_GBps=_bw, nvlink_latency_us=_lat,
              link=st.sampled_from(["nvlink", "infinity_fabric"])),
    st.builds(nvl72_rack, gpus=st.integers(1, 12), nvlink_bandwidth_GBps=_bw, nvlink_latency_us=_lat),
    st.builds(pcie_box, gpus=st.integers(1, 8), pcie_bandwidth_GBps=_bw, pcie_latency_us=_lat,
              gpus_per_switch=st.integers(1, 5)),
    st.builds(multi_node_ib, nodes=st.integers(1, 3), gpus_per_node=st.integers(1, 4),
              nvlink_bandwidth_GBps=_bw, nvlink_latency_us=_lat, ib_bandwidth_GBps=_bw,
              ib_latency_us=_lat, pcie_bandwidth_GBps=_bw, pcie_latency_us=_lat,
              rail_optimized=st.booleans()),
)


@settings(max_examples=150, deadline=None)
@given(_graphs)
def test_every_gpu_pair_has_a_positive_symmetric_route(graph):
    table = PathTable(graph)
    gpus = gpu_nodes(graph)
    assert len(gpus) == gpu_count(graph) >= 1
    min_latency = min(d for _, _, d in graph.edges(data="latency_us"))
    min_bw = min(d for _, _, d in graph.edges(data="bandwidth_GBps"))
    for a, b in itertools.combinations(gpus, 2):
        edges = table.edges(a, b)
        assert edges and edges[0][0] == a and edges[-1][1] == b
        assert all(graph.has_edge(*e) for e in edges)
        latency = table.latency_us(a, b)
        assert latency > 0 and latency >= min_latency
        assert latency == table.latency_us(b, a)
        assert table.bottleneck_GBps(a, b) >= min_bw
