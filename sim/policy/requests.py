"""Per-request state of one run, in one place: one column per quantity, indexed by request id.

What arrives (arrival time, prompt and output lengths) and everything the run learns about a
request — where it was routed, whether it was rejected, how far its prefill and decode have
got, when its first and last tokens came out, how often it was preempted and how many decode
passes it took — live here and nowhere else. The batching policy advances ``computed`` and
``generated``; the SimPy processes stamp the times; the observer turns the columns into
``requests.parquet``. Columns are typed ``array.array``s: 8 bytes per value (a million
requests take tens of megabytes, not the hundreds Python lists would), element access that
returns plain Python numbers in the hot path, and zero-copy numpy views at the end.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np


@dataclass
class RequestStore:
    arrival_s: np.ndarray           # float64, seconds from the first arrival
    prompt_tokens: np.ndarray       # int64
    output_tokens: np.ndarray       # int64
    prompt: array                   # the same lengths, for the hot path ('q': int64)
    output: array
    replica: array                  # -1 until routed ('i')
    rejected: array                 # 0/1 ('b')
    first_token_s: array            # NaN until the first token ('d')
    finish_s: array                 # NaN until the last token ('d')
    computed: array                 # positions whose KV is cached now ('q')
    generated: array                # output tokens sampled so far ('q')
    preemptions: array              # ('q')
    decode_passes: array            # steps that sampled a token after the first one ('q')

    @classmethod
    def of(cls, arrival_s, prompt_tokens, output_tokens) -> "RequestStore":
        arrival = np.asarray(arrival_s, dtype=np.float64)
        prompt = np.asarray(prompt_tokens, dtype=np.int64)
        output = np.asarray(output_tokens, dtype=np.int64)
        n = len(arrival)

        def filled(code: str, value) -> array:
            return array(code, [value]) * n

        return cls(arrival, prompt, output, array("q", prompt.tobytes()), array("q", output.tobytes()),
                   filled("i", -1), filled("b", 0), filled("d", float("nan")), filled("d", float("nan")),
                   filled("q", 0), filled("q", 0), filled("q", 0), filled("q", 0))

    @staticmethod
    def column(values: array, dtype) -> np.ndarray:
        """A column as a numpy array (a view of the store's buffer, copied to ``dtype``)."""
        return np.frombuffer(values, dtype=values.typecode).astype(dtype) if len(values) else np.zeros(0, dtype)

    def __len__(self) -> int:
        return len(self.prompt)

    def demand_tokens(self, request: int) -> int:
        """Prompt plus output tokens: what the request will occupy at most."""
        return self.prompt[request] + self.output[request]
