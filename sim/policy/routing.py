"""Routing of arriving requests across data-parallel replicas (pure policies).

* ``round_robin``: replica ``k mod dp`` for the k-th request;
* ``least_outstanding_tokens``: the replica with the fewest tokens still to process
  (remaining prompt plus remaining output tokens of the requests routed to it and not yet
  finished), ties to the lowest index. It sees only what a real router can know at
  arrival... except the output length, which a real router does not know: it uses the
  request's remaining prompt plus already-promised output as the load signal, the usual
  simulator simplification, stated here so that nobody mistakes it for a causal policy.
"""
from __future__ import annotations

from sim.errors import require

ROUTERS = ("round_robin", "least_outstanding_tokens")


class Router:
    def __init__(self, policy: str, replicas: int) -> None:
        require(policy in ROUTERS, f"parallel.router={policy!r} is not one of {list(ROUTERS)}")
        self.policy = policy
        self.outstanding = [0] * replicas
        self._next = 0

    def pick(self, tokens: int) -> int:
        if self.policy == "round_robin":
            k = self._next
            self._next = (self._next + 1) % len(self.outstanding)
        else:
            k = min(range(len(self.outstanding)), key=self.outstanding.__getitem__)
        self.outstanding[k] += tokens
        return k

    def done(self, replica: int, tokens: int) -> None:
        self.outstanding[replica] -= tokens
