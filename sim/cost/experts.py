"""Where a mixture-of-experts layer's tokens go under expert parallelism (pure numpy).

Assumptions: expert ``e``'s popularity follows a Zipf law ``p_e ~ 1 / (e + 1)^skew`` (``skew``
0: uniform, what a well-trained router with auxiliary balancing aims for; real routers skew,
which EPLB-style expert replication fights); a token picks expert ``e`` with probability
``q_e = min(1, top_k p_e)``, independently of its other picks; experts are placed round-robin
(expert ``e`` on rank ``e mod ranks``), so the most popular experts sit on different ranks.
A rank's share of the token-expert pairs is its experts' share of the picks.
The step waits for the slowest rank: the busiest gets ``share`` of the layer's token-expert
pairs, and the rank whose experts the batch touches most reads the most weights.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


class ExpertLoad:
    """Expected expert traffic of one layer with ``experts`` routed experts over ``ranks`` GPUs."""

    def __init__(self, experts: int, top_k: int, ranks: int, skew: float = 0.0) -> None:
        popularity = 1.0 / np.arange(1, experts + 1, dtype=np.float64) ** skew
        popularity /= popularity.sum()
        self.pick = np.minimum(1.0, top_k * popularity)            # P(a token picks expert e)
        rank_of = np.arange(experts) % ranks
        load = np.bincount(rank_of, weights=self.pick, minlength=ranks) / self.pick.sum()
        #: fraction of the layer's token-expert pairs the busiest rank computes (1/ranks balanced)
        self.share = float(load.max())
        # per rank, its experts' miss probabilities (ranks x experts/ranks, padded with 1: never picked)
        per = -(-experts // ranks)
        self._miss = np.ones((ranks, per))
        for r in range(ranks):
            mine = 1.0 - self.pick[rank_of == r]
            self._miss[r, :len(mine)] = mine
        miss = self._miss.prod(axis=1)              # P(a token picks none of a rank's experts)
        #: expected ranks a token's experts are on (its hidden state is sent once to each): for
        #: uniform routing exactly (k distinct experts of E, E/ranks per rank), else with
        #: independent picks
        if skew == 0 and experts % ranks == 0:
            per = experts // ranks
            self.ranks_per_token = ranks * (1.0 - math.comb(experts - per, top_k) / math.comb(experts, top_k))
        else:
            self.ranks_per_token = float((1.0 - miss).sum())
        self.top_k, self.ranks = top_k, ranks

    @property
    def imbalance(self) -> float:
        """The busiest rank's pairs over the mean rank's (1: balanced)."""
        return self.share * self.ranks

    def busiest_tokens(self, tokens: Any) -> Any:
        """Token-expert pairs the busiest rank computes when the layer sees ``tokens`` tokens."""
        return tokens * self.top_k * self.share

    def busiest_touched(self, tokens: Any) -> Any:
        """Expected experts at least one of ``tokens`` tokens picks, on the rank where that is
        most: the weights the slowest GPU reads (with the most pairs on another rank under skew,
        taking both maxima bounds the step from above)."""
        miss = self._miss
        if isinstance(tokens, np.ndarray):
            t = tokens.astype(np.float64).reshape(-1)
            touched = (1.0 - miss[None, :, :] ** t[:, None, None]).sum(-1).max(-1)
            return touched.reshape(tokens.shape)
        return float((1.0 - miss ** float(tokens)).sum(-1).max())
