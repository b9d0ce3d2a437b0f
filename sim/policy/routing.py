"""Routing of arriving requests across data-parallel replicas (pure policies).

* ``round_robin``: replica ``k mod dp`` for the k-th request;
* ``least_outstanding_tokens`` (default): the replica with the fewest tokens a real router can
  count at arrival -- the prompt tokens of the requests routed to it and not finished, plus
  the output tokens they have generated so far -- ties to the lowest index. It does not know
  how long the outputs will be;
* ``least_outstanding_tokens_oracle``: the same with every request counted as its prompt
  plus its whole output from the moment it is routed (the output length a real router cannot
  know; the usual simulator simplification, kept for comparison);
* ``prefix_aware``: cache affinity balanced against load, as SGLang's cache-aware router and
  Ray Serve's prefix-affinity router do. While the replicas' requests in flight differ by at
  most ``IMBALANCE_REQUESTS``, a request goes to the replica holding the longest cached prefix
  of its prompt if that covers at least ``CACHE_THRESHOLD`` of the prompt (ties: the less
  loaded); otherwise, and whenever the load is imbalanced, to the replica with the fewest
  outstanding tokens, as ``least_outstanding_tokens``. Needs ``scheduler.prefix_caching``.
"""
from __future__ import annotations

from typing import Sequence

from sim.errors import require

ROUTERS = ("round_robin", "least_outstanding_tokens", "least_outstanding_tokens_oracle", "prefix_aware")

#: prefix_aware: the fraction of the prompt a cached prefix must cover to win (SGLang's default 0.5)
CACHE_THRESHOLD = 0.5
#: prefix_aware: requests in flight by which replicas may differ before load wins over affinity
#: (SGLang's absolute balance threshold, 32)
IMBALANCE_REQUESTS = 32


class Router:
    """Where each arrival goes; told when a request finishes (:meth:`done`)."""

    def __init__(self, policy: str, replicas: int) -> None:
        require(policy in ROUTERS, f"parallel.router={policy!r} is not one of {list(ROUTERS)}")
        self.policy = policy
        self.prompt_tokens = [0] * replicas     # prompts of the requests in flight, per replica
        self.promised = [0] * replicas          # prompt + whole output of those (the oracle's count)
        self.in_flight = [0] * replicas         # requests in flight
        self._next = 0
        #: what :meth:`pick` needs told: output tokens generated so far per replica, cached prefixes
        self.needs_generated = policy in ("least_outstanding_tokens", "prefix_aware")
        self.needs_cached = policy == "prefix_aware"

    def pick(self, prompt: int, output: int, generated: Sequence[int] = (), cached: Sequence[int] = ()) -> int:
        """The replica for a request of ``prompt`` + ``output`` tokens. ``generated[k]``: output
        tokens replica ``k``'s requests in flight have produced so far (``needs_generated``);
        ``cached[k]``: tokens of this prompt cached on replica ``k`` (``needs_cached``)."""
        n = len(self.in_flight)
        if self.policy == "round_robin":
            k = self._next
            self._next = (self._next + 1) % n
        elif self.policy == "least_outstanding_tokens_oracle":
            k = min(range(n), key=self.promised.__getitem__)
        else:
            load = [self.prompt_tokens[i] + generated[i] for i in range(n)]
            k = min(range(n), key=load.__getitem__)
            if self.needs_cached and max(self.in_flight) - min(self.in_flight) <= IMBALANCE_REQUESTS:
                best = max(range(n), key=lambda i: (cached[i], -load[i]))
                if cached[best] > 0 and cached[best] >= CACHE_THRESHOLD * prompt:
                    k = best
        self.prompt_tokens[k] += prompt
        self.promised[k] += prompt + output
        self.in_flight[k] += 1
        return k

    def done(self, replica: int, prompt: int, output: int) -> None:
        self.prompt_tokens[replica] -= prompt
        self.promised[replica] -= prompt + output
        self.in_flight[replica] -= 1
