"""Collective costs (alpha-beta schedules) and the two network fidelities."""
from __future__ import annotations

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

import topologies
from sim.build import make_network
from sim.cost.collectives import (
    GroupCollectives,
    PairPath,
    oneshot_schedule_s,
    ring_allreduce_closed_form_s,
    ring_schedule_s,
)
from sim.cost.fabric import Fabric
from sim.network.collective import CollectiveNetwork
from sim.network.message import MessageNetwork
from sim.spec.engine import EngineProfile

ALPHA = 0.6e-6      # hgx_node default: GPU -> NVSwitch -> GPU
BETA = 450e9        # NVLink4 per direction
RING = EngineProfile(allreduce_algorithm="ring")
ONESHOT = EngineProfile(allreduce_algorithm="oneshot")
SW = RING.collective_software_us * 1e-6


def gpus(n: int) -> list[str]:
    return [f"gpu{i}" for i in range(n)]


def hgx_group(engine: EngineProfile, n: int = 8) -> GroupCollectives:
    fab = Fabric(topologies.hgx_node(8), engine)
    return fab.group(gpus(n))


sizes = st.one_of(st.integers(0, 1 << 30), st.floats(min_value=0.0, max_value=4e9))


# ---------------------------------------------------------------------- closed forms
@settings(max_examples=200, deadline=None)
@given(sizes)
def test_ring_allreduce_on_hgx_equals_closed_form(S):
    g = hgx_group(RING)
    expected = ring_allreduce_closed_form_s(8, S, alpha_s=ALPHA, beta_Bps=BETA, software_s=SW)
    assert g.allreduce_s(S) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("S", [0, 16, 16384, 1 << 20, 1 << 28])
def test_ring_allreduce_closed_form_for_group_sizes(n, S):
    expected = SW + 2 * (n - 1) * (ALPHA + S / n / BETA)
    assert hgx_group(RING, n).allreduce_s(S) == pytest.approx(expected, rel=1e-9)
    assert ring_allreduce_closed_form_s(n, S, ALPHA, BETA, SW) == pytest.approx(expected, rel=1e-12)


def test_closed_form_edge_cases():
    assert ring_allreduce_closed_form_s(1, 1e6, ALPHA, BETA, SW) == 0.0
    assert hgx_group(RING, 1).allreduce_s(1e6) == 0.0
    assert hgx_group(RING, 1).allgather_s(1e6) == 0.0


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(2, 8))
def test_oneshot_on_switch(S, n):
    expected = SW + ALPHA + (n - 1) * S / BETA
    assert hgx_group(ONESHOT, n).allreduce_s(S) == pytest.approx(expected, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(2, 8))
def test_ring_allgather_closed_form(S, n):
    expected = SW + (n - 1) * (ALPHA + S / BETA)
    assert hgx_group(RING, n).allgather_s(S) == pytest.approx(expected, rel=1e-9)


def test_auto_algorithm_switches_at_oneshot_max_bytes():
    auto = EngineProfile(allreduce_algorithm="auto", oneshot_max_bytes=524288)
    g, ring, one = hgx_group(auto), hgx_group(RING), hgx_group(ONESHOT)
    assert g.allreduce_algorithm(524288) == "oneshot"
    assert g.allreduce_algorithm(524289) == "ring"
    assert g.allreduce_s(16384) == one.allreduce_s(16384)
    assert g.allreduce_s(1 << 24) == ring.allreduce_s(1 << 24)
    # one-shot wins for small messages (one latency instead of 14), ring for large ones
    assert one.allreduce_s(16384) < ring.allreduce_s(16384)
    assert ring.allreduce_s(1 << 26) < one.allreduce_s(1 << 26)


def test_oneshot_only_inside_one_switch_domain():
    fab = Fabric(topologies.multi_node_ib(2), ONESHOT)
    assert fab.group(gpus(8)).allreduce_algorithm(16) == "oneshot"
    assert fab.group(gpus(16)).allreduce_algorithm(16) == "ring"          # spans two servers
    pcie = Fabric(topologies.pcie_box(8), ONESHOT, oneshot_capable=False)
    assert pcie.group(gpus(8)).allreduce_algorithm(16) == "ring"


def test_send_is_software_plus_alpha_beta():
    fab = Fabric(topologies.hgx_node(8), RING)
    assert fab.send_s("gpu0", "gpu5", 1e6) == pytest.approx(SW + ALPHA + 1e6 / BETA, rel=1e-12)
    ib = Fabric(topologies.multi_node_ib(2), RING)
    # same rail across nodes: 2 PCIe hops (1 us) + IB (5 us), bottleneck IB 50 GB/s
    assert ib.send_s("gpu0", "gpu8", 1e6) == pytest.approx(SW + 7e-6 + 1e6 / 50e9, rel=1e-12)


def test_pair_path_cut_through_and_queueing():
    p = PairPath((("a", 1e-6, 100e9), ("b", 2e-6, 50e9)))
    assert p.latency_s == 3e-6 and p.bandwidth_Bps == 50e9
    assert p.message_s(1e6) == pytest.approx(3e-6 + 1e6 / 50e9)
    free: dict = {}
    t1 = p.send(0.0, 1e6, free)
    t2 = p.send(0.0, 1e6, free)           # same path, same start: queues behind the first
    assert t1 == pytest.approx(p.message_s(1e6))
    assert t2 == pytest.approx(t1 + 1e6 / 50e9)


def test_schedules_with_identical_hops_reduce_to_closed_forms():
    path = PairPath((("x", 1e-6, 1e11),))
    ring = [PairPath(((f"e{r}", 1e-6, 1e11),)) for r in range(4)]
    assert ring_schedule_s(ring, 1e6, 6) == pytest.approx(6 * (1e-6 + 1e6 / 1e11))
    assert ring_schedule_s(ring[:1], 1e6, 6) == 0.0
    assert oneshot_schedule_s([[path]], 1e6) == pytest.approx(1e-6 + 1e6 / 1e11)


# --------------------------------------------------------------- fidelity agreement
def run_network(cls, graph, engine, op, ranks, nbytes, oneshot_capable=True):
    env = simpy.Environment()
    net = cls(env, Fabric(graph, engine, oneshot_capable=oneshot_capable))
    if op == "transfer":
        ev = net.transfer(ranks[0], ranks[1], nbytes)
    else:
        ev = net.collective(op, ranks, nbytes)
    env.run(ev)
    return env.now


CASES = [
    ("hgx8-ring", lambda: topologies.hgx_node(8), RING, "allreduce", gpus(8), True),
    ("hgx8-oneshot", lambda: topologies.hgx_node(8), ONESHOT, "allreduce", gpus(8), True),
    ("hgx8-auto", lambda: topologies.hgx_node(8), EngineProfile(), "allreduce", gpus(8), True),
    ("hgx4-oneshot-subset", lambda: topologies.hgx_node(8), ONESHOT, "allreduce", ["gpu1", "gpu3", "gpu4", "gpu6"], True),
    ("hgx8-allgather", lambda: topologies.hgx_node(8), RING, "allgather", gpus(8), True),
    ("ib2x8-ring16", lambda: topologies.multi_node_ib(2), RING, "allreduce", gpus(16), True),
    ("ib2x8-allgather16", lambda: topologies.multi_node_ib(2), RING, "allgather", gpus(16), True),
    ("ib2x8-ring16-flat", lambda: topologies.multi_node_ib(2, rail_optimized=False), RING, "allreduce", gpus(16), True),
    ("pcie8-ring", lambda: topologies.pcie_box(8), RING, "allreduce", gpus(8), False),
    ("pcie8-allgather", lambda: topologies.pcie_box(8), RING, "allgather", gpus(8), False),
    ("hgx-transfer", lambda: topologies.hgx_node(8), RING, "transfer", ["gpu0", "gpu7"], True),
    ("ib-transfer-cross-rail", lambda: topologies.multi_node_ib(2), RING, "transfer", ["gpu0", "gpu13"], True),
    ("pcie-transfer-cross-switch", lambda: topologies.pcie_box(8), RING, "transfer", ["gpu1", "gpu6"], False),
]


@pytest.mark.parametrize("name,graph,engine,op,ranks,osc", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("nbytes", [16, 16384, 1 << 20, 1 << 26])
def test_message_and_collective_fidelity_agree(name, graph, engine, op, ranks, osc, nbytes):
    g = graph()
    msg = run_network(MessageNetwork, g, engine, op, ranks, nbytes, osc)
    coll = run_network(CollectiveNetwork, g, engine, op, ranks, nbytes, osc)
    if name.startswith("ib"):
        # Across nodes a ring collective is split over one channel per rail (as NCCL does);
        # the channels contend for the NVLink links inside each node, which the collective
        # fidelity shares fluidly and the message fidelity message by message (FIFO).
        assert msg == pytest.approx(coll, rel=0.10)
        if nbytes <= 16:
            assert msg == pytest.approx(coll, rel=0.01)  # latency-bound: no contention to speak of
    else:
        assert msg == pytest.approx(coll, rel=0.01)
        assert msg == pytest.approx(coll, rel=1e-9)   # nothing contends: they agree to rounding


def test_collective_fidelity_duration_matches_group_costs():
    g = topologies.hgx_node(8)
    fab = Fabric(g, RING)
    net = CollectiveNetwork(simpy.Environment(), fab)
    assert net.duration_s("allreduce", gpus(8), 1e6) == fab.group(gpus(8)).allreduce_s(1e6)
    assert net.duration_s("allgather", gpus(8), 1e6) == fab.group(gpus(8)).allgather_s(1e6)
    assert net.duration_s("alltoall", gpus(8), 1e6) == fab.group(gpus(8)).alltoall_s(1e6)
    with pytest.raises(ValueError):
        net.duration_s("broadcast", gpus(8), 1e6)
    assert isinstance(make_network("message", simpy.Environment(), fab), MessageNetwork)
    assert isinstance(make_network("collective", simpy.Environment(), fab), CollectiveNetwork)


# ---------------------------------------------------------------------- contention
def _finish_times(graph, engine, sends, cls=MessageNetwork):
    env = simpy.Environment()
    net = cls(env, Fabric(graph, engine))
    done = {}
    for i, (src, dst, n) in enumerate(sends):
        ev = net.transfer(src, dst, n)
        ev.callbacks.append(lambda _e, i=i: done.__setitem__(i, env.now))
    env.run()
    return [done[i] for i in range(len(sends))], net


@pytest.mark.parametrize("S", [1e3, 1e6, 64e6])
def test_two_transfers_on_one_link_queue_fifo(S):
    g = topologies.hgx_node(8)
    (one,), _ = _finish_times(g, RING, [("gpu0", "gpu1", S)])
    assert one == pytest.approx(SW + ALPHA + S / BETA, rel=1e-12)
    (a, b), net = _finish_times(g, RING, [("gpu0", "gpu1", S), ("gpu0", "gpu1", S)])
    assert a == pytest.approx(one, rel=1e-12)
    assert b == pytest.approx(one + S / BETA, rel=1e-12)     # one serialisation later
    assert net.links[("gpu0", "nvswitch")].bytes_sent == 2 * S
    assert net.links[("gpu0", "nvswitch")].busy_s == pytest.approx(2 * S / BETA, rel=1e-12)
    assert net.messages == 2
    # the collective fidelity does not model contention between operations
    (ca, cb), _ = _finish_times(g, RING, [("gpu0", "gpu1", S), ("gpu0", "gpu1", S)], CollectiveNetwork)
    assert ca == cb == pytest.approx(one, rel=1e-12)


def test_incast_contends_on_the_destination_link():
    g = topologies.hgx_node(8)
    S = 8e6
    (a, b), _ = _finish_times(g, RING, [("gpu0", "gpu2", S), ("gpu1", "gpu2", S)])
    assert a == pytest.approx(SW + ALPHA + S / BETA, rel=1e-12)
    assert b == pytest.approx(a + S / BETA, rel=1e-12)


def test_disjoint_transfers_do_not_contend():
    g = topologies.hgx_node(8)
    S = 8e6
    times, _ = _finish_times(g, RING, [("gpu0", "gpu1", S), ("gpu2", "gpu3", S), ("gpu1", "gpu0", S)])
    assert times == [pytest.approx(SW + ALPHA + S / BETA, rel=1e-12)] * 3


def test_concurrent_collectives_contend_in_message_fidelity():
    g = topologies.hgx_node(8)
    S = 64e6

    def run(k, cls):
        env = simpy.Environment()
        net = cls(env, Fabric(g, RING))
        evs = [net.collective("allreduce", gpus(8), S) for _ in range(k)]
        env.run(env.all_of(evs))
        return env.now

    single = run(1, MessageNetwork)
    double = run(2, MessageNetwork)
    assert double > 1.5 * single
    assert run(2, CollectiveNetwork) == pytest.approx(single, rel=1e-9)


# -------------------------------------------------------------- latency / bandwidth scale
@pytest.mark.parametrize("engine", [RING, ONESHOT])
def test_latency_scale_halves_small_allreduce(engine):
    g = topologies.hgx_node(8)
    base = Fabric(g, engine).group(gpus(8))
    half = Fabric(g, engine, latency_scale=0.5).group(gpus(8))
    assert half.allreduce_s(0) == pytest.approx(0.5 * base.allreduce_s(0), rel=1e-12)
    assert half.allreduce_s(64) == pytest.approx(0.5 * base.allreduce_s(64), rel=1e-3)  # 64 B: bandwidth ~1e-4
    # bandwidth term unchanged: base - 2 half = -(bandwidth time)
    S = 1 << 20
    bw_time = 2 * 7 * S / 8 / BETA if engine is RING else 7 * S / BETA
    assert 2 * half.allreduce_s(S) - base.allreduce_s(S) == pytest.approx(bw_time, rel=1e-9)
    # software latency is scaled too
    assert Fabric(g, engine, latency_scale=0.5).software_s == pytest.approx(0.5 * SW)


def test_bandwidth_scale_barely_changes_small_allreduce():
    g = topologies.hgx_node(8)
    engine = EngineProfile()
    base = Fabric(g, engine).group(gpus(8)).allreduce_s(1024)
    fast = Fabric(g, engine, bandwidth_scale=10.0).group(gpus(8)).allreduce_s(1024)
    assert fast < base
    assert fast > 0.99 * base
    # while a large all-reduce speeds up almost 10x... except its latency part
    big = Fabric(g, RING).group(gpus(8)).allreduce_s(1 << 30)
    big_fast = Fabric(g, RING, bandwidth_scale=10.0).group(gpus(8)).allreduce_s(1 << 30)
    assert big / big_fast > 9.0


def test_message_fidelity_respects_latency_scale():
    env = simpy.Environment()
    net = MessageNetwork(env, Fabric(topologies.hgx_node(8), ONESHOT, latency_scale=0.5))
    env.run(net.collective("allreduce", gpus(8), 0))
    assert env.now == pytest.approx(0.5 * (SW + ALPHA), rel=1e-12)
