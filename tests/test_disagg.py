"""Disaggregated prefill and decode pools (``disagg=pools``, issue 13).

Rules checked: every request whose output has more than one token moves exactly its prompt
tokens x the model's KV bytes per token from its prefill replica to its decode replica (one
row of ``transfers.parquet`` each, bytes summed exactly), none is lost or duplicated between
the pools and every token is computed once (run-time invariants on); an isolated transfer
takes the alpha-beta time of its route, growing with ``network.latency_scale`` and shrinking
with ``network.bandwidth_scale`` as that model says; streamed layer by layer the transfer
hides behind the prefill step; the closed form the collective fidelity uses equals the
message-by-message simulation where nothing contends; on the Azure trace under load
disaggregation lowers TPOT p99 against co-located serving on the same GPUs; bad pool
settings are one line.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import simpy
from helpers import assert_equal_tables, run_sim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.app import run
from sim.build import build_cluster, make_fabric
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.des.disagg import kv_shards, pair_shares
from sim.network.collective import CollectiveNetwork
from sim.network.interface import Flow
from sim.network.message import MessageNetwork

KV_70B = 327680.0     # Llama-3-70B bf16: 2 x 80 layers x 8 KV heads x 128 x 2 bytes per token


def _run(tmp: Path, *overrides: str):
    summary = run(compose_config(["output.progress=never", *overrides]), tmp)
    req = pq.read_table(tmp / "requests.parquet").to_pydict()
    steps = pq.read_table(tmp / "steps.parquet").to_pydict()
    transfers = pq.read_table(tmp / "transfers.parquet").to_pydict() if (tmp / "transfers.parquet").exists() else None
    return summary, req, steps, transfers


def _check_pools(summary, req, steps, transfers, prefill_replicas: int, kv_bytes_per_token: float) -> None:
    """Every request once, its KV moved once and exactly, every token computed once."""
    n = len(req["request_id"])
    assert summary["complete"] and sorted(req["request_id"]) == list(range(n))
    done = np.array(req["status"]) == "completed"
    assert summary["requests"]["completed"] + summary["requests"]["rejected"] == n
    prompt, output = np.array(req["prompt_tokens"]), np.array(req["output_tokens"])
    moved = done & (output > 1)
    # one transfer per request that decodes, none for the others
    assert sorted(transfers["request_id"]) == sorted(np.array(req["request_id"])[moved].tolist())
    assert sum(transfers["bytes"]) == float((prompt[moved] * kv_bytes_per_token).sum())
    assert summary["kv_transfer"]["bytes"] == sum(transfers["bytes"])
    by_id = dict(zip(transfers["request_id"], zip(transfers["src"], transfers["dst"], transfers["end_s"],
                                                  transfers["ready_s"])))
    for i in np.flatnonzero(moved):
        src, dst, end, ready = by_id[req["request_id"][i]]
        assert src < prefill_replicas <= dst == req["replica"][i]     # prefilled in one pool, decoded in the other
        assert ready <= end == req["first_token_s"][i]                 # the first token comes with the KV
    # tokens: prompts prefilled once in the prefill pool (no preemption there), the rest decoded
    rep = np.array(steps["replica"])
    prefill_pool = rep < prefill_replicas
    preempted = summary["requests"]["preemptions"]
    if preempted == 0:
        assert np.array(steps["prefill_tokens"])[prefill_pool].sum() == prompt[done].sum()
        assert np.array(steps["decode_tokens"])[prefill_pool].sum() == 0
        assert np.array(steps["prefill_tokens"])[~prefill_pool].sum() == 0
        assert np.array(steps["decode_tokens"])[~prefill_pool].sum() == (output[moved] - 1).sum()


@pytest.mark.parametrize("transfer", ["layerwise", "whole"])
def test_kv_bytes_moved_are_exactly_prompt_tokens_times_kv_bytes(tmp_path, transfer):
    summary, req, steps, transfers = _run(
        tmp_path, "disagg=pools", f"disagg.transfer={transfer}", "disagg.decode.replicas=2", "disagg.decode.tp=4",
        "workload.max_requests=150", "debug.check_invariants=true")
    _check_pools(summary, req, steps, transfers, 1, KV_70B)
    assert summary["kv_transfer"]["transfers"] == len(transfers["request_id"]) > 100
    assert set(transfers["dst"]) == {1, 2}                  # both decode replicas used
    assert [g["gpus"] for g in summary["cost"]["groups"]] == [8, 8]    # priced per pool


def _isolated_transfer(tmp: Path, transfer: str, *overrides: str) -> dict:
    """One request alone on the cluster: its transfers.parquet row."""
    _, _, _, t = _run(tmp, "disagg=pools", f"disagg.transfer={transfer}", "workload=synthetic",
                      "workload.max_requests=1", "workload.prompt_tokens={dist: fixed, value: 2000}",
                      "workload.output_tokens={dist: fixed, value: 8}", *overrides)
    return {k: v[0] for k, v in t.items()}


@pytest.mark.parametrize("scales", [("1", "1"), ("2", "1"), ("0.5", "1"), ("1", "10"), ("2", "0.25")])
def test_an_isolated_transfer_takes_its_routes_alpha_beta_time(tmp_path, scales):
    lat, bw = scales
    row = _isolated_transfer(tmp_path, "whole", f"network.latency_scale={lat}", f"network.bandwidth_scale={bw}")
    cfg = parse_config(compose_config(["disagg=pools", f"network.latency_scale={lat}",
                                       f"network.bandwidth_scale={bw}"]))
    fabric = build_cluster(cfg).fabric
    # tp8 -> tp8: rank r's KV goes to rank r of the decode node over their shared rail
    path = fabric.pair("gpu0", "gpu8")
    assert [e[0][1] for e in path.hops][1] == "pools/rail0"
    expected = fabric.software_s + path.latency_s + 2000 * KV_70B / 8 / path.bandwidth_Bps
    assert row["end_s"] - row["start_s"] == pytest.approx(expected, rel=1e-9)
    assert row["bytes"] == 2000 * KV_70B and row["messages"] == 8


def test_transfer_time_follows_the_alpha_beta_model_across_scales(tmp_path):
    base = _isolated_transfer(tmp_path / "a", "whole")
    slow = _isolated_transfer(tmp_path / "b", "whole", "network.latency_scale=2")
    fast = _isolated_transfer(tmp_path / "c", "whole", "network.bandwidth_scale=10")
    t = {k: r["end_s"] - r["start_s"] for k, r in (("base", base), ("slow", slow), ("fast", fast))}
    fabric = build_cluster(parse_config(compose_config(["disagg=pools"]))).fabric
    alpha = fabric.software_s + fabric.pair("gpu0", "gpu8").latency_s
    assert t["slow"] - t["base"] == pytest.approx(alpha, rel=1e-9)               # latency paid once more
    assert t["base"] - t["fast"] == pytest.approx(0.9 * (t["base"] - alpha), rel=1e-9)   # bytes 10x faster


def test_layerwise_streaming_hides_the_transfer_behind_the_prefill_step(tmp_path):
    whole = _isolated_transfer(tmp_path / "w", "whole")
    layer = _isolated_transfer(tmp_path / "l", "layerwise")
    assert layer["messages"] == 8 * 80                                   # a message per layer per GPU pair
    # whole: the decode replica pulls after the prefill step; layerwise: only the last
    # layer's message (and the route latency) follows the step
    whole_exposed = whole["end_s"] - whole["ready_s"]
    layer_exposed = layer["end_s"] - layer["ready_s"]
    assert layer_exposed < 0.05 * whole_exposed
    fabric = build_cluster(parse_config(compose_config(["disagg=pools"]))).fabric
    path = fabric.pair("gpu0", "gpu8")
    last_message = fabric.software_s + path.latency_s + 2000 * KV_70B / 8 / 80 / path.bandwidth_Bps
    assert layer_exposed == pytest.approx(last_message, rel=1e-6)
    assert layer["start_s"] < layer["ready_s"]                           # it began with the step


def test_closed_form_streams_equal_message_by_message_simulation():
    cfg = parse_config(compose_config(["disagg=pools"]))
    graph = build_cluster(cfg).graph
    fabric = make_fabric(cfg, graph)
    flows = [Flow("gpu0", "gpu8", 3e6, 5, 1e-4, 2e-5), Flow("gpu1", "gpu9", 7e6, 1, 0.0, 0.0),
             Flow("gpu2", "gpu10", 1e6, 40, 5e-5, 1e-5), Flow("gpu3", "gpu14", 2e6, 3, 0.0, 1e-3)]
    ends = []
    for cls in (CollectiveNetwork, MessageNetwork):
        for f in flows:    # one flow at a time: uncontended
            env = simpy.Environment()
            env.run(cls(env, fabric).send_flows([f]))
            ends.append(env.now)
    assert ends[:4] == pytest.approx(ends[4:], rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(src_tp=st.sampled_from([1, 2, 4, 8]), src_pp=st.integers(1, 4), dst_tp=st.sampled_from([1, 2, 4, 8]),
       dst_pp=st.integers(1, 4), layers=st.integers(4, 96))
def test_pair_shares_cover_the_kv_exactly_once(src_tp, src_pp, dst_tp, dst_pp, layers):
    def layout(tp, pp, prefix):
        per = [layers // pp + (1 if s < layers % pp else 0) for s in range(pp)]
        return [[f"{prefix}{s}.{t}" for t in range(tp)] for s in range(pp)], per
    sg, sl = layout(src_tp, src_pp, "p")
    dg, dl = layout(dst_tp, dst_pp, "d")
    shares = pair_shares(kv_shards(sg, sl), kv_shards(dg, dl), layers)
    assert sum(s.fraction for s in shares) == pytest.approx(1.0, rel=1e-12)
    for stage, gpus in enumerate(dg):                 # each decode GPU receives exactly its part
        for g in gpus:
            got = sum(s.fraction for s in shares if s.dst == g)
            assert got == pytest.approx(dl[stage] / layers / dst_tp, rel=1e-12)
    for stage, gpus in enumerate(sg):                 # and each prefill GPU sends all of its own
        for g in gpus:
            assert sum(s.fraction for s in shares if s.src == g) == pytest.approx(sl[stage] / layers / src_tp, rel=1e-12)
    for s in shares:
        assert 0 <= s.layer0 < s.layer1 <= sl[s.stage]


def test_disaggregation_lowers_tpot_p99_on_the_azure_trace_under_load(tmp_path):
    common = ["workload.max_requests=1500", "workload.rate_scale=2"]
    colo, _, _, _ = _run(tmp_path / "colo", "parallel.dp=2", "topology=multi_node_ib", *common)
    pools, _, _, _ = _run(tmp_path / "pools", "disagg=pools", *common)
    assert colo["config"]["hardware"] == "h100" and pools["cost"]["usd_per_hour"] == pytest.approx(colo["cost"]["usd_per_hour"])
    # co-located, prefill chunks share the decode steps; disaggregated, decode runs alone
    assert pools["tpot_s"]["p99"] < 0.3 * colo["tpot_s"]["p99"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transfer=st.sampled_from(["layerwise", "whole"]), p_tp=st.sampled_from([1, 2]), p_pp=st.sampled_from([1, 2]),
       d_tp=st.sampled_from([1, 2]), p_rep=st.integers(1, 2), d_rep=st.integers(1, 3), caching=st.booleans(),
       router=st.sampled_from(["round_robin", "least_outstanding_tokens", "prefix_aware"]),
       preemption=st.sampled_from(["recompute", "swap"]), util=st.sampled_from([0.25, 0.9]),
       fidelity=st.sampled_from(["collective", "message"]), n=st.integers(3, 40), fast_forward=st.booleans())
def test_no_request_is_lost_or_duplicated_between_pools(transfer, p_tp, p_pp, d_tp, p_rep, d_rep, caching, router,
                                                        preemption, util, fidelity, n, fast_forward):
    if router == "prefix_aware":
        caching = True
    if fidelity == "message":
        n = min(n, 8)
    over = ["disagg=pools", f"disagg.transfer={transfer}", f"disagg.prefill.tp={p_tp}", f"disagg.prefill.pp={p_pp}",
            f"disagg.prefill.replicas={p_rep}", f"disagg.decode.tp={d_tp}", f"disagg.decode.replicas={d_rep}",
            "model=llama3_8b", "workload=mooncake_synthetic", f"workload.max_requests={n}", "workload.rate_scale=2",
            f"parallel.router={router}", f"scheduler.prefix_caching={str(caching).lower()}",
            f"scheduler.preemption={preemption}", f"engine.gpu_memory_utilization={util}",
            f"network.fidelity={fidelity}", f"sim.fast_forward={str(fast_forward).lower()}", "debug.check_invariants=true"]
    with tempfile.TemporaryDirectory() as d:
        summary, req, steps, transfers = _run(Path(d), *over)
    kv = 2 * 32 * 8 * 128 * 2.0       # llama3_8b bf16
    _check_pools(summary, req, steps, transfers, p_rep, kv)


@pytest.mark.parametrize("overrides, message", [
    (["disagg=pools", "fleet=[{hardware: h100, replicas: 1}]"], "fleet and disagg=pools both set"),
    (["disagg=pools", "disagg.decode.hardware=l40s"], "disagg.decode.hardware=l40s has no NVLink"),
    (["disagg=pools", "disagg.transfer=rdma"], "disagg.transfer='rdma' is not one of ['layerwise', 'whole']"),
    (["disagg=pools", "disagg.prefill.replicas=0"], "disagg.prefill.replicas=0 must be an integer >= 1"),
    (["disagg=pools", "speculative=self"], "disagg=pools with speculative decoding is not built"),
    (["disagg=pools", "+disagg.decode.gpus=3"], "disagg.decode has unknown field(s) ['gpus']"),
])
def test_bad_pool_settings_are_one_line(tmp_path, overrides, message):
    proc = run_sim("-m", "sim", f"hydra.run.dir={tmp_path}", "workload.max_requests=5", *overrides)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-1500:]


@pytest.mark.parametrize("transfer", ["layerwise", "whole"])
def test_one_token_requests_finish_at_the_prefill_pool_and_move_nothing(tmp_path, transfer):
    trace = tmp_path / "trace.csv"
    rows = [(0.01 * i, 300 + 7 * i, 1 if i % 3 == 0 else 20) for i in range(60)]
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows))
    summary, req, steps, transfers = _run(
        tmp_path / "out", "disagg=pools", f"disagg.transfer={transfer}", "disagg.prefill.replicas=2",
        "disagg.decode.replicas=2", "disagg.prefill.tp=4", "disagg.decode.tp=4", f"workload.path={trace}",
        "debug.check_invariants=true")
    _check_pools(summary, req, steps, transfers, 2, KV_70B)
    one = np.array(req["output_tokens"]) == 1
    assert one.sum() == 20 and (np.array(req["replica"])[one] < 2).all()     # finished where they were prefilled


def test_a_mixed_hardware_pool_pair_runs_and_prices_each_pool(tmp_path):
    summary, req, steps, transfers = _run(
        tmp_path, "disagg=pools", "disagg.prefill.hardware=h200", "disagg.decode.hardware=h100",
        "workload.max_requests=40", "debug.check_invariants=true")
    _check_pools(summary, req, steps, transfers, 1, KV_70B)
    groups = summary["cost"]["groups"]
    assert [g["hardware"] for g in groups] == ["h200", "h100"] and groups[0]["usd_per_hour"] != groups[1]["usd_per_hour"]
    assert json.dumps(summary["kv_transfer"], allow_nan=False)
    k = summary["kv_transfer"]
    assert k["p50_s"] <= k["p90_s"] <= k["p99_s"] and k["exposed_p99_s"] <= k["p99_s"] + 1e-12


def test_a_run_that_moves_no_kv_reports_null_times():
    from array import array
    from types import SimpleNamespace

    from sim.des.disagg import transfer_stats

    empty = SimpleNamespace(bytes_moved=0.0, durations_s=array("d"), exposed_s=array("d"), mode="whole")
    stats = transfer_stats(empty)
    assert stats["transfers"] == 0 and stats["mean_s"] is None and stats["exposed_p99_s"] is None
    assert json.dumps(stats, allow_nan=False)


def test_replicated_heads_and_latents_reach_every_rank_that_holds_them():
    layers = [40, 40]
    dst = [[f"d{s}.{t}" for t in range(8)] for s in range(2)]
    # 2 KV heads over 8 decode ranks: each rank holds one head, four ranks per head
    shares = pair_shares(kv_shards([["p0", "p1"]], [80], 2), kv_shards(dst, layers, 2), 80)
    for g in (x for st_ in dst for x in st_):
        assert sum(s.fraction for s in shares if s.dst == g) == pytest.approx(0.5 * 0.5, rel=1e-12)
    assert sum(s.fraction for s in shares) == pytest.approx(4.0, rel=1e-12)
    # MLA's latent (one head every rank holds): every decode rank gets its stage's whole latent,
    # the sources taking turns
    shares = pair_shares(kv_shards([["p0", "p1", "p2", "p3"]], [80], 1), kv_shards(dst, layers, 1), 80)
    assert all(s.fraction == pytest.approx(0.5) for s in shares) and len(shares) == 16
    assert {s.src for s in shares} == {"p0", "p1", "p2", "p3"}
    # data-parallel attention: the request's rank on each side, one pair per stage
    shares = pair_shares(kv_shards([["p0", "p1", "p2", "p3"]], [80], 1, dp_rank=6),
                         kv_shards(dst, layers, 1, dp_rank=6), 80)
    assert [(s.src, s.dst, s.fraction) for s in shares] == [("p2", "d0.6", 0.5), ("p2", "d1.6", 0.5)]


def test_flows_converging_on_one_gpu_share_its_links_in_the_closed_form():
    """Eight prefill ranks sending into one decode GPU through its NIC (one flat InfiniBand
    leaf): the closed form shares the NIC's links between them, as the message-by-message
    simulation queues them. (Rail-optimised, the eight flows arrive on eight NICs and meet only
    at the decode GPU's NVLink port, which carries 450 GB/s: no slower than one flow.)"""
    cfg = parse_config(compose_config(["disagg=pools", "disagg.decode.tp=1", "model=llama3_8b",
                                       "topology=multi_node_ib", "topology.rail_optimized=false"]))
    fabric = make_fabric(cfg, build_cluster(cfg).graph)
    fan_in = [Flow(f"gpu{r}", "gpu8", 2e6) for r in range(8)]
    ends = []
    for cls in (CollectiveNetwork, MessageNetwork):
        env = simpy.Environment()
        env.run(cls(env, fabric).send_flows(fan_in))
        ends.append(env.now)
    path = fabric.pair("gpu0", "gpu8")
    assert ends[0] == pytest.approx(fabric.software_s + path.latency_s + 16e6 / path.bandwidth_Bps, rel=0.05)
    assert ends[0] == pytest.approx(ends[1], rel=1e-9)


@pytest.mark.parametrize("transfer", ["layerwise", "whole"])
def test_freed_blocks_wake_the_replica_waiting_for_them(tmp_path, transfer):
    """Blocks freed when a transfer ends (prefill side) or a one-token request drops its
    reservation (decode side) let waiting requests in at once: nothing stalls, and stepping
    and fast-forwarding agree (regressions: both used to wait for an unrelated event)."""
    trace = tmp_path / "trace.csv"
    rows = ([(0.0, 30000, 10)] * 3 + [(0.01, 8000, 1)] * 5 + [(0.02, 8000, 10)]
            + [(0.03 + 0.001 * i, 3000, 300) for i in range(10)])
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows))
    common = ["disagg=pools", f"disagg.transfer={transfer}", "disagg.prefill.tp=1", "disagg.decode.tp=1",
              "disagg.decode.replicas=2", "model=llama3_8b", "engine.gpu_memory_utilization=0.3",
              "scheduler.chunked_prefill=false", f"workload.path={trace}", "debug.check_invariants=true"]
    on = _run(tmp_path / "ff", *common)
    off = _run(tmp_path / "step", *common, "sim.fast_forward=false")
    for summary, req, steps, transfers in (on, off):
        _check_pools(summary, req, steps, transfers, 1, 131072.0)
    for table in ("requests.parquet", "transfers.parquet"):
        assert_equal_tables(pq.read_table(tmp_path / "ff" / table), pq.read_table(tmp_path / "step" / table), table)
