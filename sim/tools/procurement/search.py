"""SLO-constrained search for the cheapest fleet: analytic pruning, discrete-event confirmation.

Search space: hardware presets x tensor/pipeline split x batch limits (sequences per step,
tokens per step: the prefill chunk that decode steps share) x replicas (data parallelism). For each (hardware, split, batch limit) -- a *layout* -- the analytic model
(the same step predictor as the simulation, no queueing) gives:

* whether one replica can meet the TTFT target at all: the trace's 99th-percentile prompt,
  prefilled alone in chunks of ``scheduler.max_tokens_per_step``, must fit in ``ttft_p99_s``;
* whether its TPOT tail can meet the target: a decode step that shares the step with a full
  prefill chunk (``max_tokens_per_step`` tokens of a long prompt) must fit in ``tpot_p99_s``;
* its sustainable output throughput under the TPOT target: the largest batch ``B`` (within
  the batch limit, the KV cache at the mean request length, and the step's token budget:
  ``B`` decodes plus the ``B x prompt/output`` prompt tokens that keep ``B`` requests in flight
  must fit in ``max_tokens_per_step``) whose steady step (:func:`sim.cost.analytic.steady_step_s`)
  is at most ``tpot_p99_s``; throughput ``B / step``;
* hence a lower bound on the replicas the trace's mean output rate needs, raised by its
  bursts: 99 % of the prompt tokens arriving within any window of ``W`` seconds must be
  prefilled within ``W + ttft_p99_s`` at the replica's chunked-prefill rate.

With ``search.disagg`` every layout is also tried as disaggregated pools (``disagg=pools``:
``P`` prefill and ``D`` decode replicas of the layout, KV moved layer by layer between them):
the prefill pool must prefill the p99 prompt within the TTFT target and keep up with the
trace's prompt tokens and bursts at full-chunk prefill steps; the decode pool's TPOT has no
prefill chunk in it, its throughput is the largest batch whose decode step meets the TPOT
target (:func:`pool_bound`). Every (layout, ``P``, ``D``) within the limits is a candidate,
pruned below either pool's bound.

Every (layout, replicas) pair within ``max_gpus`` becomes a candidate, priced per hour by
the cost model at the analytic utilization. Candidates below their layout's bound are
*pruned* (predicted to miss the SLOs). The rest are simulated in increasing order of cost
on the trace itself until one meets both p99 targets: that is the best configuration. The
candidate one step cheaper in the whole space is then simulated too (if it was not already)
so the report can show that it misses; should it pass, it becomes the best and the step
repeats.
"""
from __future__ import annotations

import math
from itertools import combinations
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from sim.cost.money import CostConfig, FleetUse, fleet_cost, peak_power_kW
from sim.errors import ConfigError
from sim.spec.hardware import HardwareSpec


@dataclass(frozen=True)
class Slo:
    ttft_p99_s: float
    tpot_p99_s: float

    def __post_init__(self) -> None:
        for f in ("ttft_p99_s", "tpot_p99_s"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"slo.{f}={v!r} must be a number of seconds > 0")

    def met(self, summary: dict[str, Any]) -> bool:
        ttft, tpot = summary["ttft_s"]["p99"], summary["tpot_s"]["p99"]
        done = summary["requests"]["completed"] == summary["requests"]["total"]
        return bool(done and ttft is not None and tpot is not None
                    and ttft <= self.ttft_p99_s and tpot <= self.tpot_p99_s)


@dataclass(frozen=True)
class TrafficStats:
    """What the analytic model needs of the trace."""

    requests: int
    duration_s: float
    mean_prompt: float
    mean_output: float
    p99_prompt: float
    # (window_s, most prompt tokens arriving within any window of that length): the bursts
    window_prompt_tokens: tuple[tuple[float, float], ...] = ()

    @property
    def output_tokens_per_s(self) -> float:
        return self.requests * self.mean_output / self.duration_s


@dataclass(frozen=True)
class Layout:
    hardware: str
    tp: int
    pp: int
    max_batch_size: int
    max_tokens_per_step: int

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp


@dataclass
class LayoutBound:
    """Analytic verdict for one layout: feasible or why not, replicas lower bound, throughput."""

    layout: Layout
    feasible: bool
    reason: str = ""
    replica_tok_s: float = 0.0
    batch: int = 0
    min_replicas: int = 0
    prefill_p99_s: float = 0.0
    prefill_tok_s: float = 0.0       # prompt tokens per second of one replica at full-chunk steps (bursts)


@dataclass
class PoolBound:
    """Analytic verdict for one layout run as disaggregated pools: the prefill and decode
    replicas the trace needs at least. The two halves are judged apart, so a layout can
    prefill for another hardware's decode pool (``search.fleet_mix``) even when it cannot
    decode within the target itself."""

    layout: Layout
    prefill_ok: bool
    decode_ok: bool
    reason: str = ""
    min_prefill: int = 0
    min_decode: int = 0
    decode_tok_s: float = 0.0
    prefill_tok_s: float = 0.0
    batch: int = 0

    @property
    def feasible(self) -> bool:
        return self.prefill_ok and self.decode_ok


@dataclass
class Candidate:
    layout: Layout
    replicas: int
    usd_per_hour: float
    pruned: bool
    analytic_utilization: float
    summary: dict[str, Any] | None = None
    meets_slo: bool | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    prefill_replicas: int = 0       # disaggregated pools: of ``replicas``, these prefill (0: co-located)
    # a mixed fleet (``search.fleet_mix``): its groups (layout, replicas); with
    # ``prefill_replicas``, the prefill pool then the decode pool. Empty: ``replicas`` x ``layout``
    mix: tuple[tuple[Layout, int], ...] = ()
    power_kW: float = 0.0           # provisioned facility power (every GPU at TDP, hosts, PUE)
    over_caps: str = ""             # why the candidate breaks search.budget_usd_per_hour / power_kW / headroom ("" if not)
    headroom_short: str = ""        # set by the generators when it lacks its N+k spares (Caps.apply reads it)

    @property
    def groups(self) -> tuple[tuple[Layout, int], ...]:
        """(layout, replicas) of every group: one, or the prefill and decode pools, or a mix's."""
        if self.mix:
            return self.mix
        if self.prefill_replicas:
            return ((self.layout, self.prefill_replicas), (self.layout, self.replicas - self.prefill_replicas))
        return ((self.layout, self.replicas),)

    @property
    def gpus(self) -> int:
        return sum(r * lay.gpus_per_replica for lay, r in self.groups)

    @property
    def kind(self) -> tuple[str, ...]:
        """The hardware presets it is made of (the unit the fleet-mix search compares)."""
        return tuple(sorted({lay.hardware for lay, _ in self.groups}))

    def label(self) -> str:
        """E.g. ``6 x h100 TP4``, ``3P + 1D x h100 TP8``, ``4 x a100 TP1 + 1 x b200 TP1``,
        ``3P x h100 TP8 + 1D x b200 TP8``."""
        def one(lay: Layout, r: int, tag: str = "") -> str:
            return f"{r}{tag} x {lay.hardware} TP{lay.tp}" + (f" PP{lay.pp}" if lay.pp > 1 else "")
        if self.mix:
            tags = ("P", "D") if self.prefill_replicas else ("", "")
            return " + ".join(one(lay, r, t) for (lay, r), t in zip(self.mix, tags))
        if self.prefill_replicas:
            return one(self.layout, self.prefill_replicas, "P").replace(" x", f" + {self.replicas - self.prefill_replicas}D x")
        return one(self.layout, self.replicas)


@dataclass(frozen=True)
class Caps:
    """What every candidate must keep: ``budget_usd_per_hour`` (its analytic $/h) and
    ``power_kW`` (its provisioned facility power, :func:`sim.cost.money.peak_power_kW`), None
    for no limit; ``headroom`` k: the analytic bound must hold with the k largest replicas
    (of each pool) out of service, N+k (the candidate generators mark a fleet short of it; it
    is then excluded like one over a cap, never simulated)."""

    budget_usd_per_hour: float | None = None
    power_kW: float | None = None
    headroom: int = 0

    def __post_init__(self) -> None:
        for f in ("budget_usd_per_hour", "power_kW"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise ConfigError(f"search.{f}={v!r} must be a number > 0 or null")
        if isinstance(self.headroom, bool) or not isinstance(self.headroom, int) or self.headroom < 0:
            raise ConfigError(f"search.headroom={self.headroom!r} must be an integer >= 0")

    def apply(self, cands: Iterable[Candidate], cost: CostConfig, hardware: Callable[[str], HardwareSpec]) -> None:
        """Set each candidate's ``power_kW`` and, where it breaks a cap, ``over_caps``."""
        for c in cands:
            c.power_kW = sum(peak_power_kW(cost, hardware(lay.hardware), r * lay.gpus_per_replica) for lay, r in c.groups)
            why = [c.headroom_short] if c.headroom_short else []
            if self.budget_usd_per_hour is not None and c.usd_per_hour > self.budget_usd_per_hour:
                why.append(f"${c.usd_per_hour:.2f}/h > search.budget_usd_per_hour={self.budget_usd_per_hour}")
            if self.power_kW is not None and c.power_kW > self.power_kW:
                why.append(f"{c.power_kW:.1f} kW > search.power_kW={self.power_kW}")
            c.over_caps = "; ".join(why)


def largest_batch(step_s: Callable[[int], float], most: int, target_s: float) -> tuple[int, float]:
    """The largest batch in ``1..most`` whose step (growing with the batch) is within
    ``target_s``, by bisection, and its step time; (0, 0.0) if none is."""
    lo, hi, best_b, best_t = 1, most, 0, 0.0
    while lo <= hi:
        mid = (lo + hi) // 2
        t = step_s(mid)
        if t <= target_s:
            best_b, best_t, lo = mid, t, mid + 1
        else:
            hi = mid - 1
    return best_b, best_t


def burst_replicas(need: int, prefill_tok_s: float, stats: TrafficStats, slo: Slo) -> int:
    """At least ``need`` replicas, and enough that 99 % of the prompt tokens arriving within
    any window of W seconds are prefilled within W + ttft_p99_s at ``prefill_tok_s`` each."""
    for window_s, tokens in stats.window_prompt_tokens:
        need = max(need, math.ceil(0.99 * tokens / (prefill_tok_s * (window_s + slo.ttft_p99_s))))
    return need


def layout_bound(layout: Layout, model, stats: TrafficStats, slo: Slo,
                 steady_step_s: Callable[[Any, int, float, float, float], float]) -> LayoutBound:
    """The analytic verdict for one layout (``model``: a :class:`sim.build.StepModel`)."""
    from sim.spec.batch import BatchShape

    p99 = int(math.ceil(stats.p99_prompt))
    chunk = layout.max_tokens_per_step
    prefill = 0.0
    done = 0
    while done < p99:
        n = min(chunk, p99 - done)
        prefill += model.predictor.step(BatchShape.from_sequences([done], [n], [1 if done + n >= p99 else 0])).total_s
        done += n
    if prefill > slo.ttft_p99_s:
        return LayoutBound(layout, False, f"prefill of the p99 prompt ({p99} tokens) alone takes {prefill:.3f} s "
                                          f"> ttft_p99_s={slo.ttft_p99_s}", prefill_p99_s=prefill)
    kv_cap = int(model.capacity.tokens // max(1.0, stats.mean_prompt + stats.mean_output))
    ratio = stats.mean_prompt / stats.mean_output          # prompt tokens to prefill per output token
    budget = layout.max_tokens_per_step
    # a step holds at most ``budget`` tokens: B decodes plus the prompt tokens that keep B
    # sequences in flight (B * ratio) must fit, so B <= budget / (1 + ratio)
    most = min(layout.max_batch_size, kv_cap, max(1, int(budget // (1.0 + ratio))))
    if kv_cap < 1:
        return LayoutBound(layout, False, "the KV cache holds no request of mean length", prefill_p99_s=prefill)
    # step time grows with the batch: the largest batch within the TPOT target
    def step(b: int) -> float:
        return steady_step_s(model, b, stats.mean_prompt, stats.mean_output, min(b * ratio, max(0, budget - b)))
    # the slowest decode steps share the step with a full prefill chunk; a request whose
    # decode overlaps a long prompt sees them throughout, which sets the TPOT tail
    tail = steady_step_s(model, 1, stats.mean_prompt, stats.mean_output,
                         max(0, min(budget - 1, int(stats.p99_prompt))))
    if tail > slo.tpot_p99_s:
        return LayoutBound(layout, False, f"a decode step sharing a {budget}-token prefill chunk "
                                          f"takes {tail:.4f} s > tpot_p99_s={slo.tpot_p99_s}", prefill_p99_s=prefill)
    best_b, best_t = largest_batch(step, most, slo.tpot_p99_s)
    # output tokens per step: B, unless the budget cannot also prefill B requests' prompts
    best_b_out = min(best_b, max(0, budget - best_b) / ratio) if ratio > 0 else best_b
    tput = best_b_out / best_t
    need = max(1, math.ceil(stats.output_tokens_per_s / tput))
    # bursts: 99 % of the prompts arriving within any window of W seconds must be prefilled
    # within W + ttft_p99_s, at most ``budget`` tokens per step of a replica
    chunk_step = steady_step_s(model, 1, stats.mean_prompt, stats.mean_output, max(0, budget - 1))
    chunk_tok_s = max(0, budget - 1) / chunk_step
    need = burst_replicas(need, chunk_tok_s, stats, slo)
    return LayoutBound(layout, True, replica_tok_s=tput, batch=best_b, min_replicas=need, prefill_p99_s=prefill,
                       prefill_tok_s=chunk_tok_s)


def pool_bound(layout: Layout, model, stats: TrafficStats, slo: Slo,
               steady_step_s: Callable[[Any, int, float, float, float], float],
               prefill_p99_s: float) -> PoolBound:
    """The analytic verdict for ``layout`` as disaggregated pools (``prefill_p99_s``: the p99
    prompt's chunked prefill alone, from :func:`layout_bound`)."""
    reasons = []
    prefill_ok = prefill_p99_s <= slo.ttft_p99_s
    if not prefill_ok:
        reasons.append(f"prefill of the p99 prompt alone takes {prefill_p99_s:.3f} s > ttft_p99_s={slo.ttft_p99_s}")
    budget = layout.max_tokens_per_step
    # prefill pool: full chunks, no decode sharing them
    prefill_tok_s = budget / steady_step_s(model, 0, stats.mean_prompt, 0.0, budget)
    need_p = burst_replicas(max(1, math.ceil(stats.requests * stats.mean_prompt / stats.duration_s / prefill_tok_s)),
                            prefill_tok_s, stats, slo)
    # decode pool: decode steps only, the largest batch within the TPOT target
    kv_cap = int(model.capacity.tokens // max(1.0, stats.mean_prompt + stats.mean_output))
    most = min(layout.max_batch_size, kv_cap, budget)
    decode_ok = most >= 1 and steady_step_s(model, 1, stats.mean_prompt, stats.mean_output, 0) <= slo.tpot_p99_s
    if not decode_ok:
        reasons.append("a decode step of one sequence misses tpot_p99_s" if most >= 1
                       else "the KV cache holds no request of mean length")
        return PoolBound(layout, prefill_ok, False, "; ".join(reasons), min_prefill=need_p,
                         prefill_tok_s=prefill_tok_s)
    best_b, best_t = largest_batch(lambda b: steady_step_s(model, b, stats.mean_prompt, stats.mean_output, 0),
                                   most, slo.tpot_p99_s)
    tput = best_b / best_t
    need_d = max(1, math.ceil(stats.output_tokens_per_s / tput))
    return PoolBound(layout, prefill_ok, True, "; ".join(reasons), min_prefill=need_p, min_decode=need_d,
                     decode_tok_s=tput, prefill_tok_s=prefill_tok_s, batch=best_b)


def pool_candidates(bounds: Iterable[PoolBound], stats: TrafficStats, cost: CostConfig,
                    hardware: Callable[[str], HardwareSpec], max_gpus: int, max_replicas: int,
                    gpus_per_node: int, headroom: int = 0) -> list[Candidate]:
    """Every (feasible layout, prefill replicas, decode replicas) within the limits (every
    GPU of the pools has an InfiniBand port); ``headroom`` spare replicas in each pool."""
    out = []
    for b, r, gpus, hw in _sizes(bounds, hardware, max_gpus, max_replicas, 2):
        if hw.scaleup_link == "pcie":
            continue            # pools are built on NVLink nodes joined over InfiniBand
        for p in range(1, r):
            d = r - p
            util = min(1.0, stats.output_tokens_per_s / (d * b.decode_tok_s))
            out.append(Candidate(b.layout, r, _usd_per_hour(cost, hw, gpus, util, gpus_per_node, gpus),
                                 pruned=p < b.min_prefill or d < b.min_decode, analytic_utilization=util,
                                 headroom_short=_short(headroom, p < b.min_prefill + headroom or d < b.min_decode + headroom),
                                 prefill_replicas=p))
    return out


def _sizes(bounds: Iterable[Any], hardware: Callable[[str], HardwareSpec], max_gpus: int, max_replicas: int,
           fewest: int):
    """(bound, replicas, GPUs, hardware) for every feasible layout and replica count from
    ``fewest`` within the limits."""
    for b in bounds:
        if not b.feasible:
            continue
        hw = hardware(b.layout.hardware)
        for r in range(fewest, max_replicas + 1):
            gpus = r * b.layout.gpus_per_replica
            if gpus > max_gpus:
                break
            yield b, r, gpus, hw


def _usd_per_hour(cost: CostConfig, hw: HardwareSpec, gpus: int, util: float, gpus_per_node: int,
                  network_ports: int) -> float:
    """The cost model's $/h of ``gpus`` GPUs busy ``util`` of the time."""
    use = FleetUse(gpus=gpus, nodes=gpus / gpus_per_node, network_ports=network_ports, makespan_s=3600.0,
                   gpu_busy_s=util * gpus * 3600.0, output_tokens=1)
    return fleet_cost(cost, hw, use)["usd_per_hour"]


def order(cands: list[Candidate]) -> list[Candidate]:
    """Cheapest first (co-located before pools of the same price)."""
    return sorted(cands, key=lambda c: (c.usd_per_hour, c.gpus, c.prefill_replicas > 0, bool(c.mix), c.layout.hardware,
                                        c.layout.tp, c.layout.pp, c.layout.max_batch_size, c.layout.max_tokens_per_step,
                                        c.replicas, c.prefill_replicas,
                                        tuple((lay.hardware, lay.tp, lay.pp, r) for lay, r in c.mix)))


def candidates(bounds: Iterable[LayoutBound], stats: TrafficStats, cost: CostConfig,
               hardware: Callable[[str], HardwareSpec], max_gpus: int, max_replicas: int,
               gpus_per_node: int, headroom: int = 0) -> list[Candidate]:
    """Every (feasible layout, replicas) pair within the limits, cheapest first; ``headroom``
    replicas beyond the analytic bound (N+k)."""
    out = []
    for b, r, gpus, hw in _sizes(bounds, hardware, max_gpus, max_replicas, 1):
        util = min(1.0, stats.output_tokens_per_s / (r * b.replica_tok_s))
        price = _usd_per_hour(cost, hw, gpus, util, gpus_per_node, gpus if gpus > gpus_per_node else 0)
        out.append(Candidate(b.layout, r, price, pruned=r < b.min_replicas, analytic_utilization=util,
                             headroom_short=_short(headroom, r < b.min_replicas + headroom)))
    return order(out)


def _short(headroom: int, short: bool) -> str:
    """The cap a candidate breaks when it lacks its N+k spare replicas ("" if it has them):
    such a fleet is never simulated, so the cheaper-candidate check cannot pick it either."""
    return f"fewer than N+{headroom} replicas (search.headroom={headroom})" if headroom and short else ""


def serves(units: list[tuple[float, float, int]], stats: TrafficStats, slo: Slo, headroom: int = 0) -> bool:
    """Whether replicas of different layouts behind one router keep up with the trace by the
    analytic bound of :func:`layout_bound`, summed over replicas: ``units`` are (output tokens/s
    under the TPOT target, prompt tokens/s at full-chunk steps, replicas). Output: the trace's
    mean output rate; prompts: 99 % of the prompt tokens arriving in any window of W seconds
    prefilled within W + ttft_p99_s. With ``headroom`` k (N+k) it must hold whichever k
    replicas are out of service: every way of taking k from the groups is tried (the replica
    with the most output throughput need not have the most prefill throughput)."""
    counts = [n for _, _, n in units]
    if headroom >= sum(counts):
        return False
    for out in _removals(counts, headroom):
        left = [(tok, pre, n - k) for (tok, pre, n), k in zip(units, out)]
        if sum(tok * n for tok, _, n in left) < stats.output_tokens_per_s:
            return False
        prefill = sum(pre * n for _, pre, n in left)
        if any(prefill * (w + slo.ttft_p99_s) < 0.99 * tokens for w, tokens in stats.window_prompt_tokens):
            return False
    return True


def _removals(counts: list[int], k: int) -> Iterable[tuple[int, ...]]:
    """Every way of taking ``k`` replicas from groups of ``counts`` (as many from each as it has)."""
    if not counts:
        if k == 0:
            yield ()
        return
    for first in range(min(k, counts[0]) + 1):
        for rest in _removals(counts[1:], k - first):
            yield (first, *rest)


def _groups_usd(cost: CostConfig, hardware: Callable[[str], HardwareSpec], groups: list[tuple[Layout, int, float]],
                gpus_per_node: int, pools: bool) -> float:
    """$/h of groups (layout, replicas, utilization), each priced at its hardware's rate; a
    group spanning nodes (every GPU of disaggregated pools) has an InfiniBand port per GPU."""
    total = 0.0
    for lay, r, util in groups:
        gpus = r * lay.gpus_per_replica
        total += _usd_per_hour(cost, hardware(lay.hardware), gpus, util, gpus_per_node,
                               gpus if pools or gpus > gpus_per_node else 0)
    return total


def _same_limits(a: Layout, b: Layout) -> bool:
    """Groups of one run share its scheduler's batch limits."""
    return (a.max_batch_size, a.max_tokens_per_step) == (b.max_batch_size, b.max_tokens_per_step)


def _pair_sizes(a: Layout, b: Layout, max_gpus: int, max_replicas: int) -> Iterable[tuple[int, int]]:
    """Every (replicas of ``a``, replicas of ``b``), at least one each, within the limits."""
    for ra in range(1, max_replicas):
        if ra * a.gpus_per_replica + b.gpus_per_replica > max_gpus:
            break
        for rb in range(1, max_replicas - ra + 1):
            if ra * a.gpus_per_replica + rb * b.gpus_per_replica > max_gpus:
                break
            yield ra, rb


def mix_candidates(bounds: Iterable[LayoutBound], stats: TrafficStats, slo: Slo, cost: CostConfig,
                   hardware: Callable[[str], HardwareSpec], max_gpus: int, max_replicas: int,
                   gpus_per_node: int, headroom: int = 0) -> list[Candidate]:
    """Every fleet of two feasible layouts on different hardware (same batch limits) behind one
    router, at least one replica of each, within the limits; pruned where :func:`serves` says
    the replicas together cannot keep up. Both groups are taken to run at the fleet's analytic
    utilization."""
    feasible = [b for b in bounds if b.feasible]
    out = []
    for b1, b2 in combinations(feasible, 2):
        if b1.layout.hardware > b2.layout.hardware:
            b1, b2 = b2, b1             # groups in hardware-name order, whatever search.hardware's order
        l1, l2 = b1.layout, b2.layout
        if l1.hardware == l2.hardware or not _same_limits(l1, l2):
            continue
        for r1, r2 in _pair_sizes(l1, l2, max_gpus, max_replicas):
                util = min(1.0, stats.output_tokens_per_s / (r1 * b1.replica_tok_s + r2 * b2.replica_tok_s))
                price = _groups_usd(cost, hardware, [(l1, r1, util), (l2, r2, util)], gpus_per_node, False)
                units = [(b1.replica_tok_s, b1.prefill_tok_s, r1), (b2.replica_tok_s, b2.prefill_tok_s, r2)]
                out.append(Candidate(l1, r1 + r2, price, pruned=not serves(units, stats, slo),
                                     analytic_utilization=util, mix=((l1, r1), (l2, r2)),
                                     headroom_short=_short(headroom, headroom > 0 and not serves(units, stats, slo,
                                                                                                   headroom))))
    return out


def cross_pool_candidates(bounds: Iterable[PoolBound], stats: TrafficStats, cost: CostConfig,
                          hardware: Callable[[str], HardwareSpec], max_gpus: int, max_replicas: int,
                          gpus_per_node: int, headroom: int = 0) -> list[Candidate]:
    """Disaggregated pools on different hardware: every (layout that can prefill, layout of
    other hardware that can decode, same batch limits, P prefill and D decode replicas) within
    the limits, pruned below either pool's bound plus ``headroom``."""
    bounds = list(bounds)
    out = []
    for bp in (b for b in bounds if b.prefill_ok):
        for bd in (b for b in bounds if b.decode_ok):
            lp, ld = bp.layout, bd.layout
            if lp.hardware == ld.hardware or not _same_limits(lp, ld) or "pcie" in (
                    hardware(lp.hardware).scaleup_link, hardware(ld.hardware).scaleup_link):
                continue
            for p, d in _pair_sizes(lp, ld, max_gpus, max_replicas):
                    util_d = min(1.0, stats.output_tokens_per_s / (d * bd.decode_tok_s))
                    util_p = min(1.0, stats.requests * stats.mean_prompt / stats.duration_s / (p * bp.prefill_tok_s))
                    price = _groups_usd(cost, hardware, [(lp, p, util_p), (ld, d, util_d)], gpus_per_node, True)
                    out.append(Candidate(lp, p + d, price, pruned=p < bp.min_prefill or d < bd.min_decode,
                                         headroom_short=_short(headroom, p < bp.min_prefill + headroom
                                                          or d < bd.min_decode + headroom),
                                         analytic_utilization=util_d, prefill_replicas=p, mix=((lp, p), (ld, d))))
    return out


def confirm_once(c: Candidate, slo: Slo, simulate: Callable[[Candidate], dict[str, Any]]) -> bool:
    """Whether ``c`` meets the SLOs, simulating it unless it already was (a configuration the
    simulator refuses misses, with its one-line reason in ``error``)."""
    if c.meets_slo is None:
        try:
            c.summary = simulate(c)
            c.meets_slo = slo.met(c.summary)
        except ConfigError as exc:
            c.error, c.meets_slo = str(exc).splitlines()[0], False
    return bool(c.meets_slo)


def search(cands: list[Candidate], slo: Slo, simulate: Callable[[Candidate], dict[str, Any]],
           max_runs: int) -> tuple[Candidate | None, Candidate | None]:
    """Simulate unpruned candidates cheapest first until one meets the SLOs; then make sure
    the nearest strictly cheaper candidate was simulated and misses (if it meets them, it is
    the new best and the check repeats). Returns (best, one step cheaper)."""
    best, cheaper, _ = search_status(cands, slo, simulate, max_runs)
    return best, cheaper


def search_status(cands: list[Candidate], slo: Slo, simulate: Callable[[Candidate], dict[str, Any]],
                  max_runs: int) -> tuple[Candidate | None, Candidate | None, str]:
    """:func:`search`, and how it ended: ``found``, ``none`` (every unpruned candidate simulated
    and missing) or ``cut short`` (``max_runs`` reached first)."""
    runs = 0
    for i, c in enumerate(cands):
        if c.pruned or c.meets_slo is False:
            continue
        if runs >= max_runs:
            return None, None, "cut short"
        if c.meets_slo is None:
            runs += 1
        if confirm_once(c, slo, simulate):
            return (*descend(cands, i, slo, simulate), "found")
    return None, None, "none"


def descend(cands: list[Candidate], best_i: int, slo: Slo,
            simulate: Callable[[Candidate], dict[str, Any]]) -> tuple[Candidate, Candidate | None]:
    """From ``cands[best_i]`` (simulated, meeting the SLOs): simulate the nearest strictly
    cheaper candidate until one misses; returns (the cheapest meeting them, that one)."""
    while True:
        cheaper_i = max((j for j in range(best_i) if cands[j].usd_per_hour < cands[best_i].usd_per_hour), default=None)
        if cheaper_i is None:
            return cands[best_i], None
        if not confirm_once(cands[cheaper_i], slo, simulate):
            return cands[best_i], cands[cheaper_i]
        best_i = cheaper_i   # the analytic pruning was wrong: the cheaper one is the new best
