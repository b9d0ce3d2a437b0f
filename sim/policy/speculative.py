"""Speculative decoding: draft proposals, one verification pass, accepted-length sampling.

Modelling assumptions (physics.md section 3):

* each decoding sequence proposes ``gamma`` draft tokens; the target verifies ``gamma + 1``
  positions (the last sampled token plus the drafts) in one forward pass, priced by the same
  step predictor with ``new_tokens = gamma + 1`` (its extra arithmetic, KV traffic and LM-head
  work are charged, so verification turns compute-bound at large batch);
* drafts are accepted left to right, each with probability ``a`` independently, so the
  accepted count is ``min(gamma, Geometric)`` and a pass yields ``k + 1`` tokens (the accepted
  drafts plus the target's own next token); the expectation is ``(1 - a^(gamma+1)) / (1 - a)``;
  ``a`` is one number, or per request from a Beta distribution with that mean; with
  ``acceptance_by_position`` draft ``k`` is accepted with its own probability ``a_k`` (EAGLE and
  MTP heads are surer of the next token than of the fifth: acceptance falls with depth), the
  last rate repeating past the list, so a pass yields ``1 + sum_k prod_{j<=k} a_j`` tokens on
  average; a request's Beta draw then scales every rate by its ratio to ``acceptance``
  (an easier task accepts more at every depth), capped at 1, so with a Beta spread the mean
  rates fall a little below the list (``[0.95, 0.9, 0.85]`` averages [0.92, 0.89, 0.85] at
  concentration 10);
* rejected positions are rolled back from the KV cache;
* drafting precedes verification and runs ``gamma`` sequential draft-model steps (a separate
  draft model, ``method=draft``, on the target's GPUs or its own), or ``gamma`` passes of a
  one-layer draft head on the target's GPUs (``method=self``, EAGLE/MTP-like);
* a Python-driven loop (the engine's ``speculative_pass_overhead_us`` and
  ``speculative_level_overhead_us``) adds host time to every pass, counted with the draft;
* ``num_tokens: auto`` picks, per step, the ``gamma`` that maximises expected tokens per second
  for the current batch (backing off as batches grow and verification gets expensive);
* ``tree_tokens`` (Medusa, EAGLE, Hydra): the drafts form a tree of ``gamma`` levels whose
  ``tree_tokens - 1`` nodes are verified together with the last token in one pass (tree
  attention), so verification prices ``tree_tokens`` tokens per sequence; the first draft pass
  reads the last token and every later one a tree level of ``(tree_tokens - 1) / gamma`` tokens
  per sequence; the accepted path
  is still at most ``gamma`` deep, with the same acceptance model (a tree's many candidates per
  level are what make its per-level rates high). A sequence drafting fewer levels (near its
  output's end) verifies a proportional share of the tree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np

from sim.errors import require


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "none"
    acceptance: float = 0.8
    acceptance_dist: str = "fixed"
    acceptance_concentration: float = 10.0
    num_tokens: int | str = 4
    max_num_tokens: int = 8
    draft_model: str | None = None
    placement: str = "same"
    draft_tp: int | None = None
    draft_layers: int = 1
    acceptance_by_position: tuple[float, ...] | None = None   # per draft depth (null: ``acceptance`` at every depth)
    tree_tokens: int | None = None    # tokens verified per pass with a draft tree (null: a chain, gamma + 1)

    def __post_init__(self) -> None:
        if self.acceptance_by_position is not None:
            rates = self.acceptance_by_position
            require(isinstance(rates, (list, tuple)) and len(rates) >= 1
                    and all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0.0 <= r <= 1.0 for r in rates),
                    f"speculative.acceptance_by_position={rates!r} must be null or a non-empty list of probabilities in [0, 1]")
            object.__setattr__(self, "acceptance_by_position", tuple(float(r) for r in rates))
        require(self.method in ("none", "draft", "self"),
                f"speculative.method={self.method!r} is not one of ['none', 'draft', 'self']")
        require(0.0 <= self.acceptance <= 1.0, f"speculative.acceptance={self.acceptance!r} must be in [0, 1]")
        require(self.acceptance_dist in ("fixed", "beta"),
                f"speculative.acceptance_dist={self.acceptance_dist!r} is not one of ['fixed', 'beta']")
        require(self.acceptance_concentration > 0,
                f"speculative.acceptance_concentration={self.acceptance_concentration!r} must be > 0")
        require(self.num_tokens == "auto" or (isinstance(self.num_tokens, int) and self.num_tokens >= 0),
                f"speculative.num_tokens={self.num_tokens!r} must be an integer >= 0 or 'auto'")
        require(self.max_num_tokens >= 1, f"speculative.max_num_tokens={self.max_num_tokens!r} must be >= 1")
        require(self.placement in ("same", "separate"),
                f"speculative.placement={self.placement!r} is not one of ['same', 'separate']")
        require(self.draft_tp is None or self.draft_tp >= 1,
                f"speculative.draft_tp={self.draft_tp!r} must be null or >= 1")
        require(self.draft_layers >= 1, f"speculative.draft_layers={self.draft_layers!r} must be >= 1")
        require(self.tree_tokens is None or (isinstance(self.num_tokens, int) and self.num_tokens >= 1
                                             and self.tree_tokens >= self.num_tokens + 1),
                f"speculative.tree_tokens={self.tree_tokens!r} must be null or at least speculative.num_tokens + 1 "
                f"(num_tokens={self.num_tokens!r}, the tree's depth, a fixed integer >= 1)")
        require(self.method != "draft" or bool(self.draft_model),
                "speculative.method=draft needs speculative.draft_model=<model preset>")

    @property
    def enabled(self) -> bool:
        return self.method != "none" and self.num_tokens != 0

    @property
    def rates(self) -> float | tuple[float, ...]:
        """The acceptance model for expectations: one rate, or the per-position rates."""
        return self.acceptance_by_position if self.acceptance_by_position is not None else self.acceptance

    def request_rates(self, request_acceptance: float) -> float | tuple[float, ...]:
        """A request's acceptance model given its draw (per-position rates scaled by it)."""
        if self.acceptance_by_position is None:
            return request_acceptance
        f = request_acceptance / self.acceptance if self.acceptance > 0 else 1.0
        return tuple(min(1.0, r * f) for r in self.acceptance_by_position)

    @property
    def width(self) -> float:
        """Draft tokens per sequence and draft pass (tree level): 1 for a chain."""
        if self.tree_tokens is None:
            return 1.0
        return (self.tree_tokens - 1) / float(self.num_tokens)

    def verified(self, proposed: int) -> int:
        """Tokens a sequence verifies after drafting ``proposed`` levels."""
        return 1 + (proposed if self.tree_tokens is None else int(np.ceil(proposed * self.width - 1e-9)))

    @property
    def extra_gpus(self) -> int:
        """GPUs per replica beyond the target's (a draft model on its own GPUs)."""
        return (self.draft_tp or 1) if self.method == "draft" and self.placement == "separate" else 0


def _survival(rates: tuple[float, ...], depth: int) -> np.ndarray:
    """``P(drafts 1..k all accepted)`` for k = 0..depth (the last rate repeats)."""
    r = np.array([rates[min(k, len(rates) - 1)] for k in range(depth)], dtype=np.float64)
    return np.concatenate([[1.0], np.cumprod(r)])


def expected_tokens(acceptance, gamma):
    """Expected tokens per verification pass: ``(1 - a^(gamma+1)) / (1 - a)`` (``gamma + 1`` at
    a = 1); for per-position rates (a tuple) ``1 + sum_{k<=gamma} prod_{j<=k} a_j``."""
    if isinstance(acceptance, tuple):
        g = np.asarray(gamma, dtype=np.int64)
        cum = np.cumsum(_survival(acceptance, int(g.max()) if g.size else 0))
        e = cum[g]
        return float(e) if np.ndim(e) == 0 else e.astype(np.float64)
    a = np.asarray(acceptance, dtype=np.float64)
    g = np.asarray(gamma, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(a < 1.0, (1.0 - a ** (g + 1.0)) / np.where(a < 1.0, 1.0 - a, 1.0), g + 1.0)
    return float(e) if e.ndim == 0 else e


def sample_accepted(rng: np.random.Generator, acceptance, gamma: int) -> int:
    """Accepted drafts of one pass: leading successes of ``gamma`` Bernoulli(a) trials (per
    position ``a_k`` when ``acceptance`` is a tuple of rates)."""
    if gamma <= 0:
        return 0
    if isinstance(acceptance, tuple):
        u = rng.random(gamma)
        for k in range(gamma):
            if u[k] >= acceptance[min(k, len(acceptance) - 1)]:
                return k
        return gamma
    if acceptance >= 1.0:
        return gamma
    if acceptance <= 0.0:
        return 0
    return int(min(gamma, rng.geometric(1.0 - acceptance) - 1))


def request_acceptance(rng: np.random.Generator, cfg: SpeculativeConfig, n: int) -> np.ndarray:
    """Per-request acceptance probability: fixed, or Beta with mean ``acceptance``."""
    if cfg.acceptance_dist == "fixed" or cfg.acceptance in (0.0, 1.0):
        return np.full(n, cfg.acceptance)
    k = cfg.acceptance_concentration
    return rng.beta(cfg.acceptance * k, (1.0 - cfg.acceptance) * k, size=n)


def best_gamma(pass_s: Mapping[int, Any], acceptance: float | tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The draft length maximising expected tokens per second of one pass, per element.

    ``pass_s[g]``: the pass time at ``gamma = g`` (a number or an array, e.g. one per batch
    size), candidates in increasing ``g``. A longer draft must beat a shorter one by more
    than 1e-12 relative (ties go to the shorter). Returns arrays of the chosen ``gamma``, its
    expected tokens per pass and its rate (tokens/s).
    """
    gam = tok = rate = None
    for g, t in pass_s.items():
        e = expected_tokens(acceptance, g) if g > 0 else 1.0
        r = e / np.asarray(t, dtype=np.float64)
        if rate is None or gam is None or tok is None:
            rate, gam, tok = r, np.full(r.shape, g), np.full(r.shape, e)
        else:
            better = r > rate * (1 + 1e-12)
            rate, gam, tok = np.where(better, r, rate), np.where(better, g, gam), np.where(better, e, tok)
    if rate is None or gam is None or tok is None:
        raise ValueError("best_gamma needs at least one candidate")
    return gam, tok, rate


class Speculation(Protocol):
    """What a replica asks of its speculative decoding (:class:`SpeculativeDecoder`)."""

    draft: Any
    cfg: SpeculativeConfig

    def gamma_for(self, n_decode: int, mean_context: float) -> int: ...

    def draft_time(self, prefill_ctx, prefill_new, decode_ctx, gamma: int) -> Any: ...


class SpeculativeDecoder:
    """Draft cost, verification cost and the gamma policy of one replica (pure cost model).

    ``draft`` is the draft model's step predictor (on the target's GPUs with the target's
    tensor parallelism, or on its own GPUs), or a one-layer draft head for ``method=self``;
    ``handoff_s`` is the per-pass latency of shipping tokens to and from separate draft GPUs.
    """

    def __init__(self, cfg: SpeculativeConfig, target, draft, handoff_s: float = 0.0) -> None:
        self.cfg, self.target, self.draft, self.handoff_s = cfg, target, draft, handoff_s
        self._gamma_cache: dict[tuple[int, int], int] = {}

    def draft_time(self, prefill_ctx, prefill_new, decode_ctx, gamma: int):
        """Draft work before one verification: the first draft pass also ingests the step's
        prompt chunks (the draft needs their KV); passes 2..gamma cover decoding sequences."""
        from sim.cost.step_time import StepTime
        from sim.spec.batch import BatchShape

        if self.draft is None:
            return StepTime()
        ctx = list(prefill_ctx) + (list(decode_ctx) if gamma > 0 else [])
        new = list(prefill_new) + ([1] * len(decode_ctx) if gamma > 0 else [])
        total = StepTime()
        if ctx:
            total = total + self.draft.step(BatchShape.from_sequences(ctx, new))
        if gamma > 1 and decode_ctx:
            w = self.cfg.width        # a tree level's tokens per sequence
            rest = self.draft.step(BatchShape.from_sequences(np.asarray(decode_ctx) + 1, np.full(len(decode_ctx), w)))
            total = total + rest.scaled(gamma - 1)
        if gamma > 0 and decode_ctx and self.handoff_s:
            total = total + StepTime(network_s=2.0 * self.handoff_s)
        if gamma > 0 and decode_ctx:
            total = total + StepTime(fixed_s=self.loop_s(gamma))
        return total

    def loop_s(self, gamma: int) -> float:
        """Host time of the speculative loop around one pass of ``gamma`` drafted levels."""
        e = self.target.engine
        return (e.speculative_pass_overhead_us + gamma * e.speculative_level_overhead_us) * 1e-6

    def pass_time(self, batch, context: float, gamma: int):
        """StepTime of one steady decode pass: ``gamma`` draft steps plus verifying ``gamma+1``
        tokens (a tree's ``tree_tokens``) for ``batch`` sequences at ``context`` cached tokens (``batch`` may be an array)."""
        return self.pass_parts(batch, context, gamma)[0]

    def pass_parts(self, batch, context: float, gamma: int):
        """(:meth:`pass_time`, the busiest pipeline stage's time of that pass): the draft and the
        loop run on the first stage's GPUs; a pipeline full of micro-batches is paced by the
        busiest stage."""
        from sim.cost.step_time import StepTime
        from sim.spec.batch import BatchShape

        shape = self._verify_shape(batch, context, gamma)
        stages = self.target.stage_times(shape)
        verify = self.target.through_stages(shape, stages)
        busiest = [np.asarray(t.total_s, dtype=np.float64) for t in stages]
        if gamma > 0 and self.draft is not None:
            # the first draft pass reads the last token; each later one a tree level of w tokens
            first = BatchShape.uniform(batch, context, 1)
            level = BatchShape.uniform(batch, context, self.cfg.width)
            draft = self.draft.step(first) + (self.draft.step(level).scaled(gamma - 1) if gamma > 1 else StepTime())
            extra = draft + StepTime(network_s=2.0 * self.handoff_s, fixed_s=self.loop_s(gamma))
            verify = verify + extra
            busiest[0] = busiest[0] + extra.total_s
        return verify, (np.maximum.reduce(busiest) if len(busiest) > 1 else busiest[0])

    def _verify_shape(self, batch, context: float, gamma: int):
        """The verification pass's batch: every sequence's last token and its ``gamma`` drafts
        (a tree's ``tree_tokens``), logits at each; without drafts, one decode token."""
        from sim.spec.batch import BatchShape

        return BatchShape.uniform(batch, context, self.cfg.verified(gamma) if gamma > 0 else 1, sampled=gamma > 0)

    def gamma_for(self, n_decode: int, mean_context: float) -> int:
        """Draft length for a step with ``n_decode`` decoding sequences (fixed or the auto policy)."""
        cfg = self.cfg
        if not cfg.enabled or n_decode == 0:
            return 0
        if cfg.num_tokens != "auto":
            return int(cfg.num_tokens)
        key = (n_decode, int(mean_context) // 256)
        g = self._gamma_cache.get(key)
        if g is None:
            ctx = (key[1] + 0.5) * 256
            times = {k: self.pass_time(n_decode, ctx, k).total_s for k in range(cfg.max_num_tokens + 1)}
            g = int(best_gamma(times, cfg.rates)[0])
            self._gamma_cache[key] = g
        return g
