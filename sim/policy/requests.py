"""Per-request state of the requests in flight, in one place: one column per quantity,
indexed by *slot*.

A request takes a slot when it arrives (:meth:`RequestStore.admit`) and gives it back when
its row has been logged (finished, or at the end of a stopped run), so the store holds the
requests in flight, not the whole trace: a million-request run needs as many slots as
requests are ever in flight at once. The batching policy, the KV pool and the router know
requests by slot; ``request_id[slot]`` says which request of the trace it is.

What arrives (arrival time, prompt and output lengths) and everything the run learns about a
request — where it was routed, how far its prefill and decode have got, when its first token
came out (and when it was first scheduled), how often it was preempted and how many decode passes it took — live here. The
batching policy advances ``computed`` and ``generated``; the SimPy processes stamp the times.
Columns are typed ``array.array``s (8 bytes per value, plain Python numbers on access in the
hot path) that grow in place, so references to them stay valid.
"""
from __future__ import annotations

from array import array

import numpy as np


class RequestStore:
    """Columns of the requests in flight, by slot; free slots are reused, last freed first."""

    COLUMNS = {"request_id": ("q", -1), "arrival_s": ("d", 0.0), "prompt": ("q", 0), "output": ("q", 0),
               "replica": ("i", -1), "scheduled_s": ("d", float("nan")), "first_token_s": ("d", float("nan")), "computed": ("q", 0),
               "generated": ("q", 0), "preemptions": ("q", 0), "decode_passes": ("q", 0), "cached": ("q", 0),
               "priority": ("q", 0), "restarts": ("q", 0)}

    def __init__(self, capacity: int = 256) -> None:
        self.request_id = array("q")
        self.arrival_s = array("d")
        self.prompt = array("q")            # prompt tokens
        self.output = array("q")            # output tokens the request will produce
        self.replica = array("i")           # where it was routed (-1: not yet)
        self.scheduled_s = array("d")       # NaN until a step first computes part of its prompt
        self.first_token_s = array("d")     # NaN until the first token
        self.computed = array("q")          # positions whose KV is cached now
        self.generated = array("q")         # output tokens sampled so far
        self.preemptions = array("q")
        self.decode_passes = array("q")     # steps that sampled a token after the first one
        self.cached = array("q")            # prompt tokens found in the prefix cache when first scheduled
        self.priority = array("q")          # lower is served first (scheduler.policy=priority)
        self.restarts = array("q")          # times a fault took its replica down while it was in flight
        self._free: list[int] = []
        self._grow(max(1, capacity))

    def _grow(self, more: int) -> None:
        start = len(self.request_id)
        for name, (code, value) in self.COLUMNS.items():
            getattr(self, name).extend(array(code, [value]) * more)   # in place: references stay valid
        self._free.extend(range(start + more - 1, start - 1, -1))

    @classmethod
    def of(cls, arrival_s, prompt_tokens, output_tokens) -> "RequestStore":
        """A store with every request of a table admitted in order (slot ``i`` = request ``i``)."""
        store = cls(len(arrival_s))
        for i, (a, p, o) in enumerate(zip(np.asarray(arrival_s, dtype=np.float64).tolist(),
                                          np.asarray(prompt_tokens, dtype=np.int64).tolist(),
                                          np.asarray(output_tokens, dtype=np.int64).tolist())):
            store.admit(i, a, p, o)
        return store

    def admit(self, request_id: int, arrival_s: float, prompt: int, output: int) -> int:
        """A slot for an arriving request, its columns reset; more slots if none is free."""
        if not self._free:
            self._grow(len(self.request_id))
        slot = self._free.pop()
        self.request_id[slot] = request_id
        self.arrival_s[slot] = arrival_s
        self.prompt[slot] = prompt
        self.output[slot] = output
        self.replica[slot] = -1
        self.scheduled_s[slot] = float("nan")
        self.first_token_s[slot] = float("nan")
        self.computed[slot] = 0
        self.generated[slot] = 0
        self.preemptions[slot] = 0
        self.decode_passes[slot] = 0
        self.cached[slot] = 0
        self.priority[slot] = 0
        self.restarts[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        """Give ``slot`` back (its request has been logged)."""
        self.request_id[slot] = -1
        self._free.append(slot)

    def occupied(self) -> list[int]:
        """Slots holding a request, in request order."""
        return sorted((s for s, r in enumerate(self.request_id) if r >= 0), key=self.request_id.__getitem__)

    @property
    def capacity(self) -> int:
        return len(self.request_id)

    def demand_tokens(self, slot: int) -> int:
        """Prompt plus output tokens: what the request will occupy at most."""
        return self.prompt[slot] + self.output[slot]
