"""The request table: what arrives at the cluster, one row per inference request.

Modelling assumptions
---------------------
* A request is fully described by its arrival time, its prompt length and the number of
  tokens it generates.  Content is not modelled, except for optional prefix-block ids
  (Mooncake traces) that say which 512-token prompt blocks are shared between requests.
* ``arrival_s`` is in seconds *from the first request*: the constructor shifts the
  arrivals so that the first one is exactly ``0.0`` (absolute wall-clock time carries no
  meaning for the simulator).  Arrivals must be finite and non-decreasing; several
  requests may arrive at the same instant.
* Every request has ``prompt_tokens >= 1`` and ``output_tokens >= 1``: a generation of
  zero tokens, or one with an empty prompt, cannot be simulated as a prefill + decode.
  The trace readers clamp zero lengths found in real traces up to 1 and record how many
  rows they touched in ``clamped_rows``; negative lengths are always errors.  (The
  bundled Azure and Mooncake traces contain no zero-length rows, so for them
  ``clamped_rows == 0``.)
* Tables are immutable: the arrays are private read-only copies, and every
  transformation (``take``, ``scaled_rate``) returns a new table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from workloads._checks import count_param, positive_real
from workloads.errors import WorkloadError

__all__ = ["RequestTable"]


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


def _int_column(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise WorkloadError(f"{name} has shape {array.shape}; must be a 1-D array")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind in "iu":
        if array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
            raise WorkloadError(f"{name} has a value {array.max()} above the int64 range")
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        bad = ~(np.isfinite(array) & (array == np.round(array)))
        if bad.any():
            i = int(np.argmax(bad))
            raise WorkloadError(f"{name}[{i}]={array[i]!r} is not an integer; must be an integer >= 1")
        return array.astype(np.int64)
    raise WorkloadError(f"{name} has dtype {array.dtype}; must be an integer array")


#: largest |priority| a trace may give
PRIORITY_LIMIT = 2**31 - 1


@dataclass(frozen=True, eq=False)
class RequestTable:
    """Arrival times and token counts of a sequence of LLM inference requests.

    Attributes
    ----------
    arrival_s:
        float64 seconds from the first request; non-decreasing, first element ``0.0``.
    prompt_tokens, output_tokens:
        int64 token counts, each ``>= 1``.
    source:
        Human-readable origin, e.g. ``"azure_llm_2023_code.csv"`` or ``"synthetic-poisson"``.
    prefix_block_ids:
        ``None`` or one int64 array per request with the ids of its prompt blocks of
        ``prefix_block_tokens`` tokens (equal ids across requests = shared prefix block).
    prefix_block_tokens:
        Tokens per prefix block (Mooncake uses 512).
    priority:
        ``None`` (every request priority 0) or one int64 per request; lower is served first
        (vLLM's convention) under ``scheduler.policy=priority``.
    clamped_rows:
        How many rows of the source trace had a zero prompt or output length that the
        reader clamped up to 1.
    rebased_s:
        Seconds subtracted from the source's arrival times so that the first is 0.0 (the
        first arrival's absolute time, e.g. a Unix timestamp; 0.0 if it already was 0).
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str = "unknown"
    prefix_block_ids: tuple[np.ndarray, ...] | None = None
    prefix_block_tokens: int = 512
    clamped_rows: int = field(default=0)
    rebased_s: float = field(default=0.0)
    priority: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise WorkloadError(f"source={self.source!r} is not a non-empty string")

        arrival = np.asarray(self.arrival_s)
        if arrival.ndim != 1:
            raise WorkloadError(f"arrival_s has shape {arrival.shape}; must be a 1-D array")
        if arrival.dtype.kind not in "iuf":
            raise WorkloadError(f"arrival_s has dtype {arrival.dtype}; must be a real-valued array")
        arrival = arrival.astype(np.float64)
        prompt = _int_column("prompt_tokens", self.prompt_tokens)
        output = _int_column("output_tokens", self.output_tokens)

        n = arrival.size
        if n == 0:
            raise WorkloadError("arrival_s is empty; a request table needs at least 1 request")
        if prompt.size != n or output.size != n:
            raise WorkloadError(
                f"column lengths differ: arrival_s={n}, prompt_tokens={prompt.size}, "
                f"output_tokens={output.size}; all must be equal"
            )
        finite = np.isfinite(arrival)
        if not finite.all():
            i = int(np.argmin(finite))
            raise WorkloadError(f"arrival_s[{i}]={arrival[i]!r} is not finite; must be a finite number >= 0")
        if arrival[0] < 0:
            raise WorkloadError(f"arrival_s[0]={arrival[0]!r} is negative; must be >= 0")
        backwards = np.diff(arrival) < 0
        if backwards.any():
            i = int(np.argmax(backwards)) + 1
            raise WorkloadError(
                f"arrival_s[{i}]={arrival[i]!r} is before arrival_s[{i - 1}]={arrival[i - 1]!r}; "
                "arrivals must be non-decreasing"
            )
        for name, column in (("prompt_tokens", prompt), ("output_tokens", output)):
            low = column < 1
            if low.any():
                i = int(np.argmax(low))
                raise WorkloadError(f"{name}[{i}]={int(column[i])} is too small; must be >= 1")

        block_tokens = count_param("prefix_block_tokens", self.prefix_block_tokens)
        clamped = count_param("clamped_rows", self.clamped_rows, minimum=0)

        blocks = self.prefix_block_ids
        if blocks is not None:
            blocks = tuple(blocks)
            if len(blocks) != n:
                raise WorkloadError(
                    f"prefix_block_ids has {len(blocks)} entries; must have one per request ({n})"
                )
            checked = []
            for i, ids in enumerate(blocks):
                ids = np.asarray(ids)
                if ids.size == 0:
                    ids = np.zeros(0, dtype=np.int64)
                if ids.ndim != 1 or ids.dtype.kind not in "iu":
                    raise WorkloadError(
                        f"prefix_block_ids[{i}] has dtype {ids.dtype} and shape {ids.shape}; "
                        "must be a 1-D integer array"
                    )
                checked.append(_frozen(ids.astype(np.int64)))
            blocks = tuple(checked)

        priority = self.priority
        if priority is not None:
            priority = np.asarray(priority)
            if priority.ndim != 1 or priority.size != n or priority.dtype.kind not in "iu":
                raise WorkloadError(f"priority has dtype {priority.dtype} and shape {priority.shape}; "
                                    f"must be one integer per request ({n})")
            big = np.abs(priority.astype(np.int64)) > PRIORITY_LIMIT
            if big.any():
                i = int(np.argmax(big))
                raise WorkloadError(f"priority[{i}]={int(priority[i])} is out of range; must be within "
                                    f"+-{PRIORITY_LIMIT:,}")
            priority = _frozen(priority.astype(np.int64))

        rebased = float(self.rebased_s)
        if arrival[0] != 0.0:
            rebased += float(arrival[0])
            arrival = arrival - arrival[0]
        object.__setattr__(self, "rebased_s", rebased)
        object.__setattr__(self, "arrival_s", _frozen(arrival))
        object.__setattr__(self, "prompt_tokens", _frozen(prompt))
        object.__setattr__(self, "output_tokens", _frozen(output))
        object.__setattr__(self, "prefix_block_ids", blocks)
        object.__setattr__(self, "prefix_block_tokens", block_tokens)
        object.__setattr__(self, "clamped_rows", clamped)
        object.__setattr__(self, "priority", priority)

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    def __repr__(self) -> str:
        return (
            f"RequestTable(source={self.source!r}, requests={len(self)}, "
            f"duration_s={self.duration_s:.3f}, prefix_blocks={self.prefix_block_ids is not None})"
        )

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last arrival (0.0 for a single request)."""
        return float(self.arrival_s[-1] - self.arrival_s[0])

    def take(self, n: int) -> RequestTable:
        """The first ``n`` requests (``1 <= n <= len(self)``)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= len(self):
            raise WorkloadError(f"take(n={n!r}): n must be an integer in 1..{len(self)}")
        n = int(n)
        blocks = None if self.prefix_block_ids is None else self.prefix_block_ids[:n]
        return replace(
            self,
            arrival_s=self.arrival_s[:n],
            prompt_tokens=self.prompt_tokens[:n],
            output_tokens=self.output_tokens[:n],
            prefix_block_ids=blocks,
            priority=None if self.priority is None else self.priority[:n],
        )

    def resampled(self, rng: np.random.Generator) -> RequestTable:
        """One bootstrap draw of the same traffic: the arrival times are kept and each arrival
        gets the (prompt, output) lengths of a request drawn with replacement from the table
        (its prefix blocks travel with it). Used to measure the spread of results over replays."""
        if not isinstance(rng, np.random.Generator):
            raise WorkloadError(f"rng={rng!r} is not a numpy Generator")
        idx = rng.integers(0, len(self), len(self))
        blocks = None if self.prefix_block_ids is None else tuple(self.prefix_block_ids[i] for i in idx)
        return replace(self, prompt_tokens=self.prompt_tokens[idx], output_tokens=self.output_tokens[idx],
                       prefix_block_ids=blocks, source=f"{self.source} (resampled)",
                       priority=None if self.priority is None else self.priority[idx])

    def scaled_rate(self, factor: float) -> RequestTable:
        """Replay at ``factor`` times the recorded arrival rate (``arrival_s / factor``).

        Order, token counts and prefix blocks are unchanged; ``factor > 1`` compresses the
        trace in time, ``0 < factor < 1`` stretches it.
        """
        factor = positive_real("scaled_rate factor", factor)
        return replace(self, arrival_s=self.arrival_s / factor)

    def tiled(self, copies: int) -> RequestTable:
        """The table replayed ``copies`` times back to back (a long run from a short trace).

        Copy ``j`` arrives ``j x period`` later, the period being the trace's span plus one mean
        inter-arrival gap (``duration_s x n / (n - 1)``), so the seam between copies looks like
        the trace's own spacing; lengths, priorities and prefix blocks repeat (a prefix cache
        sees the same prompts again, as a replayed day would)."""
        copies = count_param("workload.repeat", copies)
        if copies == 1:
            return self
        n = len(self)
        if n < 2 or self.duration_s <= 0:
            raise WorkloadError(f"workload.repeat={copies}: a trace whose requests all arrive at once has no span to tile")
        period = self.duration_s * n / (n - 1)
        start = self.arrival_s - self.arrival_s[0]
        arrival = (start[None, :] + period * np.arange(copies)[:, None]).ravel()
        blocks = None if self.prefix_block_ids is None else self.prefix_block_ids * copies
        return replace(self, arrival_s=arrival, prompt_tokens=np.tile(self.prompt_tokens, copies),
                       output_tokens=np.tile(self.output_tokens, copies), prefix_block_ids=blocks,
                       source=f"{self.source} x{copies}",
                       priority=None if self.priority is None else np.tile(self.priority, copies))

    def summary(self) -> dict[str, float]:
        """Descriptive statistics of the table.

        ``rate_per_s`` is ``(count - 1) / duration_s``, the mean arrival rate estimated from
        the inter-arrival gaps; it is ``nan`` for a single request and ``inf`` when all
        requests arrive at the same instant.
        """
        count = len(self)
        duration = self.duration_s
        if count == 1:
            rate = math.nan
        elif duration == 0:
            rate = math.inf
        else:
            rate = (count - 1) / duration
        out: dict[str, float] = {"count": count, "duration_s": duration, "rate_per_s": rate}
        for name, column in (("prompt_tokens", self.prompt_tokens), ("output_tokens", self.output_tokens)):
            out[f"mean_{name}"] = float(np.mean(column))
            out[f"median_{name}"] = float(np.median(column))
            out[f"p99_{name}"] = float(np.percentile(column, 99))
        return out

    def to_arrow(self) -> pa.Table:
        """A ``pyarrow.Table`` with columns ``arrival_s, prompt_tokens, output_tokens`` (and
        ``priority`` when the table has priorities)."""
        columns = {
            "arrival_s": pa.array(self.arrival_s, type=pa.float64()),
            "prompt_tokens": pa.array(self.prompt_tokens, type=pa.int64()),
            "output_tokens": pa.array(self.output_tokens, type=pa.int64()),
        }
        if self.priority is not None:
            columns["priority"] = pa.array(self.priority, type=pa.int64())
        return pa.table(columns, metadata={"source": self.source})
