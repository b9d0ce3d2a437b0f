"""Every preset composes and builds, and representative plans simulate end to end.

Rules:

* every preset of every config group composes with Hydra and passes ``parse_config``;
* for every hardware x model pair there is a feasible parallel plan among the usual ones
  (tp in 1,2,4,8, then tp=8 with pp=2,4,8 across nodes or a PCIe box), ``build_cluster``
  succeeds for it, infeasible smaller plans fail with a one-line ``ConfigError`` (never
  another exception), and a tiny simulation on it completes;
* every engine, topology, workload, scheduler and network fidelity builds and runs;
* message and collective network fidelity agree (TTFT/TPOT within 1%) when nothing contends;
* round-robin routing sends request ``k`` to replica ``k mod dp``;
* long-context traces larger than the KV cache are rejected, and only those.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import workloads
from sim.app import run
from sim.build import build_cluster, load_workload
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.config.presets import CONF_DIR, preset_names
from sim.errors import ConfigError

# Every conf/ group that has presets (discovered, so that a new group or preset is tested too).
GROUPS = tuple(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and any(p.glob("*.yaml"))))
PCIE_HARDWARE = {"rtx4090", "l40s"}
TINY = ["workload=synthetic", "workload.max_requests=5", "workload.prompt_tokens=64", "workload.output_tokens=4",
        "workload.rate_per_s=50", "output.progress=never"]
PLANS = [(1, 1), (2, 1), (4, 1), (8, 1), (8, 2), (8, 4), (8, 8)]


def compose(*overrides: str) -> dict:
    return compose_config([*overrides])


# A Hugging Face config.json of Llama-3-8B's shape, for the ``model=hf_config`` preset.
HF_LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
                "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
                "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
                "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 128256}


@pytest.fixture(scope="module")
def hf_config_path(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hf") / "Meta-Llama-3-8B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(HF_LLAMA3_8B))
    return d / "config.json"


def model_args(name: str, hf_path: Path) -> list[str]:
    """Overrides selecting model preset ``name`` (hf_config needs a config.json path)."""
    return [f"model={name}", f"model.path={hf_path}"] if name == "hf_config" else [f"model={name}"]


def run_tables(overrides, out: Path):
    summary = run(compose(*overrides), out)
    req = {k: np.asarray(v) for k, v in pq.read_table(out / "requests.parquet").to_pydict().items()}
    steps = {k: np.asarray(v) for k, v in pq.read_table(out / "steps.parquet").to_pydict().items()}
    return summary, req, steps


def assert_all_completed(summary, req):
    total = summary["requests"]["total"]
    assert total == len(req["request_id"]) > 0
    assert summary["requests"]["completed"] == total, summary["requests"]
    assert (req["status"] == "completed").all()
    assert np.isfinite(req["finish_s"]).all()


# ----------------------------------------------------------------------------------------------

def test_conf_groups_include_the_core_ones():
    assert {"hardware", "model", "engine", "topology", "workload", "scheduler", "network", "parallel"} <= set(GROUPS)


@pytest.mark.parametrize("group,name", [(g, n) for g in GROUPS for n in preset_names(g)])
def test_every_preset_composes_and_parses(group, name, hf_config_path):
    if group == "model":
        overrides = model_args(name, hf_config_path)
    elif group == "experiment":  # bundles are added to the defaults, not chosen from them
        overrides = [f"+experiment={name}"]
    else:
        overrides = [f"{group}={name}"]
    rc = parse_config(compose(*overrides))
    if group in ("hardware", "engine") or (group == "model" and name != "hf_config"):
        assert getattr(rc, group).name == name


def feasible_plan(hw: str, model: list[str]):
    """The first plan of PLANS that builds, and the errors of the ones before it."""
    errors = []
    # bf16 first; a model too large for 64 GPUs of this kind in bf16 (DeepSeek-V3 on 24 GB cards)
    # in the fp8 it ships in
    for tp, pp, weights in [(tp, pp, "bf16") for tp, pp in PLANS] + [(8, 8, "fp8")]:
        gpus = tp * pp
        topo = "pcie_box" if hw in PCIE_HARDWARE else ("hgx" if gpus <= 8 else "multi_node_ib")
        overrides = [f"hardware={hw}", *model, f"topology={topo}", f"parallel.tp={tp}",
                     f"parallel.pp={pp}", f"precision.weights={weights}"]
        try:
            plan = build_cluster(parse_config(compose(*overrides)))
        except ConfigError as exc:  # any other exception type fails the test
            msg = str(exc)
            assert msg and "\n" not in msg
            errors.append(msg)
            continue
        return overrides, plan, errors
    pytest.fail(f"no feasible plan for {hw} x {model}: {errors}")


EXPECTED_405B = {"h200": (8, 1), "b200": (8, 1), "mi300x": (8, 1), "h100": (8, 2), "a100": (8, 2)}


@pytest.mark.parametrize("model", preset_names("model"))
@pytest.mark.parametrize("hw", preset_names("hardware"))
def test_hardware_model_pair_builds_and_runs(tmp_path, hw, model, hf_config_path):
    overrides, plan, errors = feasible_plan(hw, model_args(model, hf_config_path))
    for msg in errors:  # smaller plans fail only because the weights do not fit
        assert "does not fit" in msg or "must divide" in msg, msg
    cap = plan.replicas[0].capacity
    assert cap.tokens > 0 and cap.kv_GB_per_gpu > 0
    rc = parse_config(compose(*overrides))
    assert plan.gpus == rc.parallel.gpus
    assert len(plan.replicas) == rc.parallel.dp
    if model == "llama3_405b" and hw in EXPECTED_405B:
        assert (rc.parallel.tp, rc.parallel.pp) == EXPECTED_405B[hw]
    summary, req, steps = run_tables([*overrides, *TINY], tmp_path)
    assert_all_completed(summary, req)
    assert summary["config"]["hardware"] == hw
    assert summary["config"]["model"] == (model if model != "hf_config" else "Meta-Llama-3-8B")
    assert summary["cost"]["gpus"] == plan.gpus


@pytest.mark.parametrize("engine", preset_names("engine"))
def test_every_engine_runs(tmp_path, engine):
    summary, req, _ = run_tables([f"engine={engine}", "model=llama3_8b", "parallel.tp=2", *TINY], tmp_path)
    assert_all_completed(summary, req)
    assert summary["config"]["engine"] == engine


@pytest.mark.parametrize("hw,topology", [("h100", "hgx"), ("h100", "multi_node_ib"), ("h100", "nvl72"),
                                         ("h100", "pcie_box"), ("rtx4090", "pcie_box"), ("l40s", "pcie_box"),
                                         ("mi300x", "hgx"), ("b200", "nvl72")])
def test_every_topology_runs(tmp_path, hw, topology):
    summary, req, steps = run_tables([f"hardware={hw}", f"topology={topology}", "model=llama3_8b",
                                      "parallel.tp=2", "parallel.dp=2", *TINY], tmp_path)
    assert_all_completed(summary, req)
    assert set(np.unique(req["replica"])) <= {0, 1}


@pytest.mark.parametrize("hw", sorted(PCIE_HARDWARE))
def test_pcie_hardware_rejects_nvlink_topologies(hw):
    with pytest.raises(ConfigError, match="pcie_box"):
        build_cluster(parse_config(compose(f"hardware={hw}", "topology=hgx", "model=llama3_8b", "parallel.tp=1")))


@pytest.mark.parametrize("workload", preset_names("workload"))
def test_every_workload_loads_and_runs(tmp_path, workload):
    overrides = [f"workload={workload}", "workload.max_requests=5", "model=llama3_1_8b", "parallel.tp=2",
                 "output.progress=never"]
    rc = parse_config(compose(*overrides))
    table = load_workload(rc)
    assert len(table) == 5 * rc.workload.repeat             # azure_code_day replays the 5 requests 24 times
    if rc.workload.source == "bundled":
        full = workloads.load_bundled(rc.workload.trace)
        np.testing.assert_array_equal(table.prompt_tokens, np.tile(full.prompt_tokens[:5], rc.workload.repeat))
        np.testing.assert_array_equal(table.output_tokens, np.tile(full.output_tokens[:5], rc.workload.repeat))
    summary, req, _ = run_tables(overrides, tmp_path)
    assert_all_completed(summary, req)
    np.testing.assert_array_equal(req["prompt_tokens"], table.prompt_tokens)


@pytest.mark.parametrize("fidelity", ["collective", "message"])
@pytest.mark.parametrize("scheduler", preset_names("scheduler"))
def test_every_scheduler_and_fidelity_runs(tmp_path, scheduler, fidelity):
    summary, req, _ = run_tables([f"scheduler={scheduler}", f"network.fidelity={fidelity}", "model=llama3_2_1b",
                                  "parallel.tp=2", *TINY], tmp_path)
    assert_all_completed(summary, req)
    assert summary["config"]["fidelity"] == fidelity


# ----------------------------------------------------------------------------------------------
# representative end-to-end plans
# ----------------------------------------------------------------------------------------------

def test_message_fidelity_tp2_pp2_dp2(tmp_path):
    summary, req, steps = run_tables(["network.fidelity=message", "model=llama3_2_1b", "parallel.tp=2",
                                      "parallel.pp=2", "parallel.dp=2", "workload=synthetic",
                                      "workload.max_requests=6", "workload.prompt_tokens=96",
                                      "workload.output_tokens=5", "workload.rate_per_s=100",
                                      "output.progress=never"], tmp_path)
    assert_all_completed(summary, req)
    assert set(np.unique(steps["replica"])) == {0, 1}
    assert summary["cost"]["gpus"] == 8
    assert summary["time_breakdown"]["network_s"] > 0


def test_tp16_across_two_ib_nodes(tmp_path):
    summary, req, steps = run_tables(["topology=multi_node_ib", "parallel.tp=16", "model=llama3_70b",
                                      "workload=synthetic", "workload.max_requests=10", "output.progress=never"],
                                     tmp_path)
    assert_all_completed(summary, req)
    assert summary["cost"]["gpus"] == 16 and summary["config"]["tp"] == 16
    assert summary["time_breakdown"]["network_s"] > 0


@pytest.mark.parametrize("dp", [2, 3])
def test_round_robin_routes_k_to_k_mod_dp(tmp_path, dp):
    summary, req, steps = run_tables(["parallel.router=round_robin", f"parallel.dp={dp}", "parallel.tp=2",
                                      "model=llama3_8b", "workload=synthetic", "workload.max_requests=20",
                                      "output.progress=never"], tmp_path)
    assert_all_completed(summary, req)
    np.testing.assert_array_equal(req["replica"], np.arange(20) % dp)
    assert set(np.unique(steps["replica"])) == set(range(dp))


def test_least_outstanding_tokens_uses_every_replica(tmp_path):
    summary, req, _ = run_tables(["parallel.router=least_outstanding_tokens", "parallel.dp=2", "parallel.tp=2",
                                  "model=llama3_8b", "workload=synthetic", "workload.max_requests=20",
                                  "workload.rate_per_s=100", "output.progress=never"], tmp_path)
    assert_all_completed(summary, req)
    assert set(np.unique(req["replica"])) == {0, 1}
    assert req["replica"][0] == 0  # ties go to the lowest index


def test_whole_prompt_scheduling_runs(tmp_path):
    summary, req, steps = run_tables(["scheduler.chunked_prefill=false", "scheduler.max_tokens_per_step=512",
                                      "model=llama3_8b", "parallel.tp=1", "workload=synthetic",
                                      "workload.max_requests=30", "workload.rate_per_s=20",
                                      "output.progress=never"], tmp_path)
    assert_all_completed(summary, req)
    # prompts are never split: the prefill tokens of a step are whole prompts
    assert steps["prefill_tokens"].sum() == req["prompt_tokens"].sum()
    big = steps["prefill_tokens"] + steps["decode_tokens"] > 512
    assert big.any() and (steps["batch_size"][big] == 1).all()


def test_mooncake_long_context_fits_on_h100(tmp_path):
    summary, req, _ = run_tables(["workload=mooncake_synthetic", "workload.max_requests=20", "model=llama3_1_8b",
                                  "parallel.tp=1", "output.progress=never"], tmp_path)
    assert_all_completed(summary, req)
    assert req["prompt_tokens"].max() > 8192  # long context indeed


def test_mooncake_rejects_exactly_what_exceeds_kv(tmp_path):
    """On one 24 GB card the KV cache holds ~27k tokens: longer requests are rejected."""
    summary, req, _ = run_tables(["workload=mooncake_synthetic", "workload.max_requests=20",
                                  "model=llama3_1_8b", "hardware=rtx4090", "topology=pcie_box", "parallel.tp=1",
                                  "output.progress=never"], tmp_path)
    cap = summary["memory"]["kv_capacity_tokens_per_replica"]
    too_big = req["prompt_tokens"] + req["output_tokens"] - 1 > cap  # the last token is never cached
    assert too_big.any() and (~too_big).any()
    r = summary["requests"]
    assert r["total"] == 20 and r["completed"] + r["rejected"] == r["total"]
    assert r["rejected"] == int(too_big.sum())
    np.testing.assert_array_equal(req["status"] == "rejected", too_big)
    assert np.isnan(req["finish_s"][too_big]).all() and np.isfinite(req["finish_s"][~too_big]).all()
    assert summary["throughput"]["output_tokens"] == int(req["output_tokens"][~too_big].sum())


@pytest.mark.parametrize("model", ["llama3_8b", "llama3_70b"])
def test_message_and_collective_fidelity_agree_without_contention(tmp_path, model):
    base = ["parallel.tp=8", f"model={model}", "workload=synthetic", "workload.max_requests=3",
            "workload.prompt_tokens=200", "workload.output_tokens=5", "workload.rate_per_s=5",
            "output.progress=never"]
    coll, _, _ = run_tables([*base, "network.fidelity=collective"], tmp_path / "c")
    msg, _, _ = run_tables([*base, "network.fidelity=message"], tmp_path / "m")
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        for stat in ("mean", "p50", "p99"):
            assert msg[metric][stat] == pytest.approx(coll[metric][stat], rel=0.01), (metric, stat)
    assert msg["time_breakdown"]["network_s"] == pytest.approx(coll["time_breakdown"]["network_s"], rel=0.01)
    assert msg["sim"]["events"] > coll["sim"]["events"]


def test_hf_config_preset_reads_the_file(hf_config_path):
    """model=hf_config with a Llama-3-8B config.json gives the llama3_8b preset's shape."""
    import dataclasses

    a = parse_config(compose(*model_args("hf_config", hf_config_path))).model
    b = parse_config(compose("model=llama3_8b")).model
    assert a.name == "Meta-Llama-3-8B"
    assert dataclasses.replace(a, name=b.name) == b


@pytest.mark.parametrize("override", ["scheduler.chunked_prefill=maybe", "output.write_parquet=maybe"])
def test_non_boolean_flags_are_rejected(override):
    with pytest.raises(ConfigError):
        parse_config(compose(override))


def test_fractional_token_budget_is_rejected_or_whole(tmp_path):
    overrides = ["workload=synthetic", "workload.max_requests=2", "workload.prompt_tokens=10",
                 "workload.output_tokens=3", "model=llama3_8b", "parallel.tp=1",
                 "scheduler.max_tokens_per_step=1.5", "output.progress=never"]
    try:
        summary, req, steps = run_tables(overrides, tmp_path)
    except ConfigError:
        return  # rejected: fine
    assert steps["prefill_tokens"].sum() == req["prompt_tokens"].sum()


def test_summary_names_the_trace_file_it_replayed(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.5,50,3\n")
    summary, req, _ = run_tables([f"workload.path={trace}", "model=llama3_8b", "parallel.tp=1",
                                  "output.progress=never"], tmp_path / "out")
    assert summary["config"]["workload"] == str(trace)
    assert summary["requests"]["total"] == 2


def test_summary_label_with_synthetic_preset_and_a_path(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.5,50,3\n")
    summary, req, _ = run_tables(["workload=synthetic", f"workload.path={trace}", "model=llama3_8b",
                                  "parallel.tp=1", "output.progress=never"], tmp_path / "out")
    assert summary["requests"]["total"] == 2  # the file was replayed ...
    assert summary["config"]["workload"] == str(trace)  # ... but the summary says "synthetic"


@pytest.mark.parametrize("assumptions", preset_names("assumptions"))
def test_every_assumptions_bundle_runs(tmp_path, assumptions):
    summary, req, _ = run_tables([f"assumptions={assumptions}", "model=llama3_8b", "parallel.tp=2", *TINY], tmp_path)
    assert_all_completed(summary, req)


def test_routers_count_only_what_a_router_can_know():
    """The causal router counts prompts plus tokens generated so far (spans in progress
    included); the oracle counts whole outputs from the start; prefix_aware follows the longest
    cached prefix while the load is balanced and falls back to the least loaded otherwise."""
    import random

    from sim.policy.routing import CACHE_THRESHOLD, IMBALANCE_REQUESTS, Router

    causal, oracle = Router("least_outstanding_tokens", 2), Router("least_outstanding_tokens_oracle", 2)
    assert causal.pick(100, 1000) == 0 and oracle.pick(100, 1000) == 0
    # a short prompt with a long output on replica 0: the oracle sees 1,100 tokens, a router 100 (+ generated)
    assert oracle.pick(500, 10) == 1
    assert causal.pick(500, 10) == 1
    assert causal.pick(50, 10) == 0                                  # 100 < 500: replica 0 is less loaded
    causal.generated[0] = 400                                        # its batcher's count: 550 > 500
    assert causal.pick(50, 10) == 1
    causal.generated[0] = 0
    assert causal.pick(50, 10, span_tokens=lambda k: 700 if k == 0 else 0) == 1   # a span's tokens count too
    causal.done(0, 100, 1000)
    assert causal.prompt_tokens == [50, 600] and causal.in_flight == [1, 3]

    # the pruned search equals the exhaustive one
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 9)
        r = Router("least_outstanding_tokens", n)
        r.prompt_tokens = [rng.randint(0, 20) for _ in range(n)]
        r.generated = [rng.randint(0, 20) for _ in range(n)]
        extra = [rng.choice([0, 0, rng.randint(0, 20)]) for _ in range(n)]
        exact = [a + b + c for a, b, c in zip(r.prompt_tokens, r.generated, extra)]
        assert r.pick(1, 1, span_tokens=extra.__getitem__) == min(range(n), key=exact.__getitem__)

    pa = Router("prefix_aware", 3)
    assert pa.pick(1000, 5, cached=[0, 0, 0]) == 0                                   # no cache: least loaded
    assert pa.pick(1000, 5, cached=[0, 256, 0]) == 1                                 # 256 < 0.5 x 1000
    assert pa.pick(1000, 5, cached=[0, 0, int(CACHE_THRESHOLD * 1000)]) == 2         # affinity
    for _ in range(IMBALANCE_REQUESTS + 1):          # pile requests on replica 2 by affinity ...
        assert pa.pick(10, 1, cached=[0, 0, 10]) == 2
    assert pa.in_flight == [1, 1, IMBALANCE_REQUESTS + 2]
    assert pa.pick(1000, 5, cached=[0, 0, 1000]) == 0   # ... until load wins
