"""Autoscaling decisions (pure): how many replicas a fleet should run, from what it observes.

Modelled on Kubernetes' Horizontal Pod Autoscaler, the scaler most serving stacks sit behind
(KServe, llm-d, NVIDIA Dynamo's Kubernetes deployments): every ``interval_s`` (HPA's sync
period, 15 s by default) a metric is compared with its target and the desired count is
``ceil(current x metric / target)``, left alone while the ratio is within ``tolerance`` of 1
(HPA: 0.1); scaling up acts at once, scaling down only to the highest recommendation of the
last ``scale_down_delay_s`` (HPA's downscale stabilization window, 300 s), so a dip does not
shed replicas that the next burst needs. The result is clamped to [``min_replicas``,
``max_replicas``] and ``headroom`` replicas are added on top (N+k: capacity kept for a fault).

Policies (``policy``):

* ``queue``: requests in the system (queued or running) per serving replica, target
  ``target_requests_per_replica`` (Knative's concurrency-based scaling; a replica's batch size
  at the latency one wants is the natural target);
* ``utilization``: the fraction of the last interval the serving replicas' GPUs were busy,
  target ``target_utilization``;
* ``slo``: the p90 time to first token of the requests that got their first token in the last
  interval over ``slo_ttft_s`` (NVIDIA Dynamo's planner scales on TTFT and ITL targets): above it
  the fleet grows in proportion; it shrinks by one replica at a time, and only while the p90
  stays below half the target for the whole stabilization window (TTFT is far from
  proportional to load, so a proportional cut would overshoot).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from sim.errors import require

POLICIES = ("none", "queue", "utilization", "slo")


def _number(value: object, name: str, low: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value > low if strict else value >= low)
    require(ok, f"autoscale.{name}={value!r} must be a number {'>' if strict else '>='} {low:g}")


@dataclass(frozen=True)
class AutoscaleConfig:
    """The ``autoscale`` config group (``conf/autoscale/*.yaml``)."""

    policy: str = "none"                    # none | queue | utilization | slo
    interval_s: float = 15.0                # Kubernetes HPA sync period
    min_replicas: int = 1
    max_replicas: int | None = None         # None: parallel.dp, the fleet built
    initial_replicas: int | None = None     # serving at t=0 (None: min_replicas + headroom)
    headroom: int = 0                       # N+k: replicas kept above what the policy asks
    tolerance: float = 0.1                  # HPA: no change while |metric / target - 1| <= this
    scale_down_delay_s: float = 300.0       # HPA downscale stabilization window
    target_requests_per_replica: float = 64.0   # queue
    target_utilization: float = 0.8        # utilization
    slo_ttft_s: float = 2.0                 # slo: p90 TTFT target

    def __post_init__(self) -> None:
        require(self.policy in POLICIES, f"autoscale.policy={self.policy!r} is not one of {list(POLICIES)}")
        _number(self.interval_s, "interval_s", 0.0, strict=True)
        for f in ("min_replicas", "headroom"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= (1 if f == "min_replicas" else 0),
                    f"autoscale.{f}={v!r} must be an integer >= {1 if f == 'min_replicas' else 0}")
        for f in ("max_replicas", "initial_replicas"):
            v = getattr(self, f)
            require(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                    f"autoscale.{f}={v!r} must be an integer >= 1 or null")
        require(self.max_replicas is None or self.max_replicas >= self.min_replicas,
                f"autoscale.max_replicas={self.max_replicas} must be >= autoscale.min_replicas={self.min_replicas}")
        _number(self.tolerance, "tolerance", 0.0)
        _number(self.scale_down_delay_s, "scale_down_delay_s", 0.0)
        _number(self.target_requests_per_replica, "target_requests_per_replica", 0.0, strict=True)
        require(isinstance(self.target_utilization, (int, float)) and not isinstance(self.target_utilization, bool)
                and 0 < self.target_utilization <= 1,
                f"autoscale.target_utilization={self.target_utilization!r} must be a fraction in (0, 1]")
        _number(self.slo_ttft_s, "slo_ttft_s", 0.0, strict=True)

    @property
    def enabled(self) -> bool:
        return self.policy != "none"


@dataclass(frozen=True)
class Observation:
    """What the scaler sees at one evaluation."""

    serving: int                # replicas serving now
    starting: int               # replicas spinning up (serving soon)
    requests: int               # requests queued or running (those waiting for a replica included)
    busy_fraction: float        # of the serving replicas' time over the last interval
    ttft_p90_s: float | None    # of first tokens in the last interval (None: none came)


def metric_ratio(cfg: AutoscaleConfig, obs: Observation) -> float | None:
    """The policy's metric over its target (None: nothing to go by this time)."""
    if cfg.policy == "queue":
        return obs.requests / max(obs.serving, 1) / cfg.target_requests_per_replica
    if cfg.policy == "utilization":
        return obs.busy_fraction / cfg.target_utilization
    if obs.ttft_p90_s is None:
        return None if obs.requests else 0.0
    return obs.ttft_p90_s / cfg.slo_ttft_s


class Scaler:
    """Recommendations over time, stabilized: :meth:`desired` at each evaluation."""

    def __init__(self, cfg: AutoscaleConfig, max_replicas: int) -> None:
        self.cfg = cfg
        self.max_replicas = max_replicas
        self._recent: deque[tuple[float, int]] = deque()     # (time, recommendation) in the window
        self._calm_since: float | None = None                # slo: since when p90 < target / 2
        self._stepped_down = False                           # slo: this evaluation's calm step down

    def recommend(self, obs: Observation, now_s: float) -> int:
        """Replicas the load needs, before stabilization and headroom: the serving replicas
        times the metric's ratio to its target (the load spread over them), or, within the
        tolerance, the replicas there are (starting ones included) less the headroom."""
        cfg = self.cfg
        kept = max(obs.serving + obs.starting - cfg.headroom, 1)
        ratio = metric_ratio(cfg, obs)
        if ratio is None or abs(ratio - 1.0) <= cfg.tolerance:
            return kept
        needed = math.ceil(max(obs.serving, 1) * ratio - 1e-9)
        if cfg.policy != "slo":
            return needed
        if ratio > 1.0:
            self._calm_since = None
            return max(needed, kept)
        if ratio < 0.5:
            if self._calm_since is None:
                self._calm_since = now_s
            if now_s - self._calm_since >= cfg.scale_down_delay_s:
                self._calm_since = now_s
                self._stepped_down = True
                return kept - 1
        else:
            self._calm_since = None
        return kept

    def desired(self, obs: Observation, now_s: float) -> int:
        """Replicas to run (serving + starting): the recommendation, no lower than any in the
        stabilization window, clamped to [min, max - headroom], plus the headroom."""
        cfg = self.cfg
        self._stepped_down = False
        rec = max(cfg.min_replicas, min(self.max_replicas - cfg.headroom, self.recommend(obs, now_s)))
        window = self._recent
        if self._stepped_down:
            window.clear()      # the calm window was the stabilization: its "keep" entries must not hide the step
        window.append((now_s, rec))
        while window and window[0][0] <= now_s - cfg.scale_down_delay_s and len(window) > 1:
            window.popleft()
        stable = max(r for _, r in window)
        return max(cfg.min_replicas, min(self.max_replicas, stable + cfg.headroom))
