"""Per-request state of one run, in one place: one column per quantity, indexed by request id.

What arrives (arrival time, prompt and output lengths) and everything the run learns about a
request — where it was routed, whether it was rejected, how far its prefill and decode have
got, when its first and last tokens came out, how often it was preempted and how many decode
passes it took — live here and nowhere else. The batching policy advances ``computed`` and
``generated``; the SimPy processes stamp the times; the observer turns the columns into
``requests.parquet``. Mutable columns are Python lists (constant-time scalar access in the
hot path, no per-access numpy boxing); they become numpy arrays once, at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RequestStore:
    arrival_s: np.ndarray           # float64, seconds from the first arrival
    prompt_tokens: np.ndarray       # int64
    output_tokens: np.ndarray       # int64
    prompt: list[int]               # the same lengths as Python ints (hot path)
    output: list[int]
    replica: list[int]              # -1 until routed
    rejected: list[bool]
    first_token_s: list[float]      # NaN until the first token
    finish_s: list[float]           # NaN until the last token
    computed: list[int]             # positions whose KV is cached now
    generated: list[int]            # output tokens sampled so far
    preemptions: list[int]
    decode_passes: list[int]        # steps that sampled a token after the first one

    @classmethod
    def of(cls, arrival_s, prompt_tokens, output_tokens) -> "RequestStore":
        arrival = np.asarray(arrival_s, dtype=np.float64)
        prompt = np.asarray(prompt_tokens, dtype=np.int64)
        output = np.asarray(output_tokens, dtype=np.int64)
        n = len(arrival)
        return cls(arrival, prompt, output, prompt.tolist(), output.tolist(), [-1] * n, [False] * n,
                   [float("nan")] * n, [float("nan")] * n, [0] * n, [0] * n, [0] * n, [0] * n)

    def __len__(self) -> int:
        return len(self.prompt)

    def demand_tokens(self, request: int) -> int:
        """Prompt plus output tokens: what the request will occupy at most."""
        return self.prompt[request] + self.output[request]
