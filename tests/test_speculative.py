"""Speculative decoding: the expected-token formula, the sampler, the gamma policy, and the
issue's acceptance directions measured in the discrete-event simulator."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.app import run
from sim.build import analytic_model
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.cost.analytic import Split
from sim.errors import ConfigError
from sim.policy.speculative import SpeculativeConfig, best_gamma, expected_tokens, sample_accepted
from sim.tools.frontier import search
from sim.tools.steptime import predict


def test_expected_tokens_closed_form():
    assert expected_tokens(0.8, 0) == 1.0
    assert expected_tokens(0.8, 4) == pytest.approx((1 - 0.8 ** 5) / 0.2)
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.0, 7) == 1.0


@pytest.mark.parametrize("a,gamma", [(0.8, 4), (0.6, 2), (0.95, 8)])
def test_sampler_mean_matches_formula(a, gamma):
    rng = np.random.default_rng(1)
    k = np.array([sample_accepted(rng, a, gamma) for _ in range(40000)])
    assert k.max() <= gamma and k.min() >= 0
    assert (k + 1).mean() == pytest.approx(expected_tokens(a, gamma), rel=0.02)


def test_best_gamma_backs_off_when_passes_get_expensive():
    cheap = best_gamma({g: 10.0 + 0.1 * g for g in range(9)}, 0.8)[0]   # verification ~free: draft long
    dear = best_gamma({g: 10.0 + 8.0 * g for g in range(9)}, 0.8)[0]    # every draft token costs most of a step
    assert cheap > dear >= 0


def test_best_gamma_is_elementwise_and_ties_go_to_the_shorter_draft():
    """Per batch size the best gamma; an equal rate never buys a longer draft."""
    a = 0.5
    t = {0: np.array([1.0, 1.0]), 1: np.array([0.5, expected_tokens(a, 1)]), 2: np.array([9.0, 9.0])}
    gam, tok, rate = best_gamma(t, a)
    assert gam.tolist() == [1, 0]      # second element: gamma=1 only ties gamma=0
    assert tok.tolist() == [expected_tokens(a, 1), 1.0]
    assert rate.tolist() == [expected_tokens(a, 1) / 0.5, 1.0]


def test_auto_gamma_shrinks_with_batch():
    cfg = compose_config(["speculative=draft", "speculative.num_tokens=auto"])
    small, large = predict(cfg, [{"size": 1}, {"size": 512}])
    assert small["gamma"] > large["gamma"]


def test_config_errors_are_config_errors():
    from sim.errors import ConfigError
    with pytest.raises(ConfigError, match="speculative.acceptance"):
        SpeculativeConfig(method="self", acceptance=1.5)
    with pytest.raises(ConfigError, match="draft_model"):
        SpeculativeConfig(method="draft")


def _decode_speed(tmp_path, name, extra, batch=1, output=256, requests=None):
    """Per-request decode speed (1 / mean TPOT) with ``batch`` sequences decoding together."""
    n = requests or batch
    trace = tmp_path / f"{name}.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + f"0.0,512,{output}\n" * n)
    cfg = compose_config([f"workload.path={trace}", "output.progress=never", f"scheduler.max_batch_size={batch}",
                          f"scheduler.max_tokens_per_step={max(2048, 512 * batch)}", *extra])
    run(cfg, tmp_path / name)
    req = pq.read_table(tmp_path / name / "requests.parquet").to_pydict()
    return 1.0 / float(np.mean(req["tpot_s"])), req


DRAFT = ["speculative=draft", "speculative.draft_model=llama3_8b", "speculative.acceptance=0.8"]


def _speedup(tmp_path, spec, extra, batch=1):
    tag = f"{abs(hash((tuple(spec), tuple(extra))))}_{batch}"
    base, _ = _decode_speed(tmp_path, "n" + tag, list(extra), batch)
    fast, req = _decode_speed(tmp_path, "s" + tag, [*spec, *extra], batch)
    assert np.all(np.array(req["tokens_per_pass"]) > 1.5)
    return fast / base


def test_70b_tp8_draft_8b_speedup_and_batch_direction(tmp_path):
    """Issue acceptance: an 8B draft at a = 0.8 speeds Llama-3-70B TP8 batch-1 decoding by
    >= 1.4x, and by less at batch 64 (verification grows compute-bound)."""
    s1 = _speedup(tmp_path, DRAFT, [])
    assert s1 >= 1.4
    assert _speedup(tmp_path, DRAFT, [], batch=64) < s1


def test_speedup_grows_with_per_message_latency_for_draft_heads(tmp_path):
    """Speculation amortizes the target's per-token latency. With draft heads (EAGLE/MTP: one
    layer, two all-reduces per proposed token) the gain grows with per-message latency. (An 8B
    draft sharded over the same 8 GPUs pays 65 collectives per proposed token, 40% of the
    target's per step, so its gain does not grow with latency: see README.)"""
    self_draft = ["speculative=self", "speculative.acceptance=0.8"]
    hi = _speedup(tmp_path, self_draft, ["topology=multi_node_ib", "parallel.tp=16", "network.latency_scale=2"])
    lo = _speedup(tmp_path, self_draft, ["topology=multi_node_ib", "parallel.tp=16", "network.latency_scale=0.5"])
    assert hi > lo > 1.4


def test_epoch_frontier_speculative_speedup():
    """Issue acceptance: with assumptions=epoch, an 8B draft at a = 0.8 raises Llama-3-70B's
    maximum speed by 1.5x-1.8x (Epoch's own model: 201.5 / 125 = 1.61x)."""
    small = {"max_gpus": 64, "batch_points": 40, "max_batch": 64}
    _, base = search(compose_config(["assumptions=epoch"]), small)
    _, spec = search(compose_config(["assumptions=epoch", *DRAFT, "speculative.num_tokens=auto",
                                     "speculative.max_num_tokens=12"]), small)
    assert 1.5 <= spec["max_speed_tok_s"] / base["max_speed_tok_s"] <= 1.8


def test_des_matches_analytic_expected_tokens(tmp_path):
    """A steady batch's per-token latency in the simulator matches the analytic
    pass time / expected tokens per pass (random acceptance: within 3%)."""
    extra = ["speculative=self", "speculative.num_tokens=4", "model=llama3_8b", "parallel.tp=1"]
    speed, req = _decode_speed(tmp_path, "steady", extra, batch=8, output=401)
    model = analytic_model(parse_config(compose_config(extra)))
    r = model.decode(Split(1), [8], context_len=512 + 200)
    assert speed == pytest.approx(r["speed_tok_s"][0], rel=0.03)
    assert float(np.mean(req["tokens_per_pass"])) == pytest.approx(r["tokens_per_pass"][0], rel=0.03)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 16), gamma=st.integers(0, 6), a=st.floats(0.0, 1.0),
       out_len=st.integers(1, 40), prompt_len=st.integers(1, 300),
       method=st.sampled_from(["self", "draft"]), chunked=st.booleans(), dist=st.sampled_from(["fixed", "beta"]),
       tree=st.sampled_from([0, 9, 64]))
def test_output_tokens_exact_under_speculation(tmp_path_factory, seed, gamma, a, out_len, prompt_len, method,
                                               chunked, dist, tree):
    out = tmp_path_factory.mktemp("spec")
    trees = [f"speculative.tree_tokens={max(tree, gamma + 1)}"] if tree and gamma >= 1 else []
    cfg = compose_config(trees + ["model=llama3_8b", "parallel.tp=2", "workload=synthetic", "workload.max_requests=12",
                          f"seed={seed}", "workload.rate_per_s=20",
                          f"workload.output_tokens={out_len}", f"workload.prompt_tokens={prompt_len}",
                          f"speculative={method}", f"speculative.num_tokens={gamma}", f"speculative.acceptance={a}",
                          f"speculative.acceptance_dist={dist}", f"scheduler.chunked_prefill={str(chunked).lower()}",
                          "scheduler.max_tokens_per_step=256", "output.progress=never",
                          "debug.check_invariants=true"])
    summary = run(cfg, out)
    req = pq.read_table(out / "requests.parquet").to_pydict()
    steps = pq.read_table(out / "steps.parquet").to_pydict()
    assert summary["requests"]["completed"] == 12
    # every request gets exactly its output tokens: decode tokens = accepted drafts + one per pass
    passes = np.array(req["decode_passes"])
    accepted = sum(steps["spec_accepted_tokens"])
    assert accepted <= sum(steps["spec_proposed_tokens"])
    assert int(passes.sum()) + accepted == int(np.sum(np.array(req["output_tokens"]) - 1))
    assert all(f >= s for f, s in zip(req["finish_s"], req["first_token_s"]))
    if gamma == 0 or a == 0.0:
        assert accepted == 0


def test_tree_verification_prices_its_tokens(tmp_path):
    """A draft tree verifies ``tree_tokens`` per sequence; its first draft pass reads the last
    token and each later one a level of ``(tree_tokens - 1) / gamma`` tokens; the simulator
    agrees with the analytic pass."""
    from sim.spec.batch import BatchShape

    cfg = SpeculativeConfig(method="self", num_tokens=5, tree_tokens=26)
    assert cfg.width == 5.0 and cfg.verified(5) == 26 and cfg.verified(2) == 11 and cfg.verified(1) == 6
    assert SpeculativeConfig(method="self", num_tokens=4).verified(3) == 4
    extra = ["speculative=self", "speculative.num_tokens=5", "speculative.tree_tokens=26", "model=llama3_8b",
             "parallel.tp=1"]
    model = analytic_model(parse_config(compose_config(extra)))
    spec = model.speculative(Split(1))
    verify = spec.target.step(BatchShape.from_sequences(np.full(8, 700), np.full(8, 26), np.full(8, 26)))
    first = spec.draft.step(BatchShape.from_sequences(np.full(8, 700), np.full(8, 1)))
    level = spec.draft.step(BatchShape.from_sequences(np.full(8, 700), np.full(8, 5)))
    expect = verify.total_s + first.total_s + 4 * level.total_s
    assert float(spec.pass_time(8, 700, 5).total_s) == pytest.approx(expect, rel=1e-9)
    chain = analytic_model(parse_config(compose_config(extra[:2] + extra[3:]))).speculative(Split(1))
    assert float(spec.pass_time(8, 700, 5).total_s) > float(chain.pass_time(8, 700, 5).total_s)
    speed, req = _decode_speed(tmp_path, "steady", extra, batch=8, output=401)
    r = model.decode(Split(1), [8], context_len=512 + 200)
    assert speed == pytest.approx(r["speed_tok_s"][0], rel=0.03)


def test_tree_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="speculative.tree_tokens"):
        SpeculativeConfig(method="self", num_tokens="auto", tree_tokens=26)
    with pytest.raises(ConfigError, match="speculative.tree_tokens"):
        SpeculativeConfig(method="self", num_tokens=5, tree_tokens=5)


def test_steptime_reports_expected_tokens_and_time_per_token():
    (r,) = predict(compose_config(DRAFT), [{"size": 1, "context_len": 1024}])
    assert r["gamma"] == 4
    assert r["expected_tokens_per_pass"] == pytest.approx(expected_tokens(0.8, 4))
    assert r["time_per_token_s"] == pytest.approx(r["total_s"] / r["expected_tokens_per_pass"])
    (base,) = predict(compose_config([]), [{"size": 1, "context_len": 1024}])
    assert r["time_per_token_s"] < base["time_per_token_s"] / 1.4
    print(json.dumps({"speedup": base["time_per_token_s"] / r["time_per_token_s"]}))


def test_acceptance_falling_with_draft_depth():
    """Per-position acceptance (EAGLE/MTP heads): the expectation is 1 + sum of survival
    products, equal to the constant-rate closed form when the rates are equal; sampling
    agrees with it; a request's draw scales every rate; the auto policy drafts less when the
    later positions are rarely accepted."""
    import numpy as np

    from sim.errors import ConfigError
    from sim.policy.speculative import SpeculativeConfig, expected_tokens, sample_accepted

    assert expected_tokens((0.8,), 4) == pytest.approx(expected_tokens(0.8, 4), rel=1e-12)
    assert expected_tokens((0.9, 0.5), 3) == pytest.approx(1 + 0.9 + 0.9 * 0.5 + 0.9 * 0.25, rel=1e-12)
    assert list(expected_tokens((0.9, 0.5), np.array([0, 1, 2]))) == pytest.approx([1.0, 1.9, 2.35])
    rng = np.random.default_rng(0)
    rates = (0.95, 0.8, 0.6, 0.4)
    draws = [sample_accepted(rng, rates, 4) + 1 for _ in range(40000)]
    assert np.mean(draws) == pytest.approx(expected_tokens(rates, 4), rel=0.01)
    cfg = SpeculativeConfig(method="self", acceptance=0.8, acceptance_by_position=[0.9, 0.6])
    assert cfg.rates == (0.9, 0.6) and cfg.request_rates(0.4) == pytest.approx((0.45, 0.3))
    assert cfg.request_rates(1.0) == (1.0, 0.75)
    with pytest.raises(ConfigError, match="acceptance_by_position"):
        SpeculativeConfig(method="self", acceptance_by_position=[1.2])


def test_auto_drafts_fewer_tokens_when_late_positions_are_rarely_accepted():
    from sim.build import build_step_model
    from sim.config.compose import compose_config

    def gamma(*over: str) -> int:
        m = build_step_model(compose_config(["speculative=self", "speculative.num_tokens=auto", *over]))
        return m.spec.gamma_for(1, 1024)
    flat = gamma("speculative.acceptance=0.8")
    falling = gamma("speculative.acceptance=0.8", "speculative.acceptance_by_position=[0.8,0.3,0.1]")
    assert falling < flat
