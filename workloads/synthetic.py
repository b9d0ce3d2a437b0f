"""Synthetic request tables: sampled arrival process x sampled token lengths.

Modelling assumptions
---------------------
* Arrival times, prompt lengths and output lengths are mutually independent (no
  correlation between a request's prompt and output lengths, nor with its arrival).
* They are drawn from three independent child generators spawned from the ``rng`` passed
  in (``rng.spawn(3)``: arrivals, prompts, outputs).  Changing a length spec therefore
  never changes the arrival times, and changing the output spec never changes the
  prompts.  Spawning advances ``rng``'s spawn counter, so two calls with the same
  generator object give different (independent) tables; two calls with generators built
  from the same seed give identical tables.
* Arrivals start at 0.0 (see :mod:`workloads.arrivals`).  ``cv`` is used only by the
  ``"gamma"`` arrival process.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from workloads.arrivals import gamma_arrivals, poisson_arrivals
from workloads.errors import WorkloadError
from workloads.lengths import sample_lengths
from workloads.request_table import RequestTable

__all__ = ["ARRIVAL_PROCESSES", "synthetic_requests"]

ARRIVAL_PROCESSES = ("poisson", "gamma")


def _children(rng: np.random.Generator, count: int) -> list[np.random.Generator]:
    if not isinstance(rng, np.random.Generator):
        raise WorkloadError(f"rng={rng!r} is not a numpy.random.Generator; pass e.g. numpy.random.default_rng(seed)")
    try:
        return rng.spawn(count)
    except TypeError:  # bit generator built without a SeedSequence: derive one from rng
        seed = np.random.SeedSequence(rng.integers(0, 2**63, size=4, dtype=np.uint64).tolist())
        return [np.random.default_rng(child) for child in seed.spawn(count)]


def synthetic_requests(
    rng: np.random.Generator,
    *,
    arrival: str = "poisson",
    rate_per_s: float,
    n: int,
    prompt_tokens: int | Mapping,
    output_tokens: int | Mapping,
    cv: float = 2.0,
) -> RequestTable:
    """``n`` synthetic requests arriving at mean rate ``rate_per_s``.

    ``arrival`` is one of ``ARRIVAL_PROCESSES``; ``prompt_tokens`` and ``output_tokens``
    are length specs for :func:`workloads.lengths.sample_lengths`.
    """
    if arrival not in ARRIVAL_PROCESSES:
        raise WorkloadError(f"arrival={arrival!r} is not an arrival process; allowed: {list(ARRIVAL_PROCESSES)}")
    arrival_rng, prompt_rng, output_rng = _children(rng, 3)
    if arrival == "poisson":
        arrival_s = poisson_arrivals(arrival_rng, rate_per_s, n)
        source = "synthetic-poisson"
    else:
        arrival_s = gamma_arrivals(arrival_rng, rate_per_s, cv, n)
        source = f"synthetic-gamma(cv={float(cv):g})"
    return RequestTable(
        arrival_s=arrival_s,
        prompt_tokens=sample_lengths(prompt_rng, prompt_tokens, n, "prompt_tokens"),
        output_tokens=sample_lengths(output_rng, output_tokens, n, "output_tokens"),
        source=source,
    )
