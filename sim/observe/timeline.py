"""``timeline.json``: a run as a Chrome trace (the JSON trace-event format that Perfetto,
ui.perfetto.dev and chrome://tracing open), written when ``output.timeline=true``.

What it shows:

* one process per replica: its steps (micro-batches under pipeline parallelism) as complete
  slices ("X") on the thread ``steps``, each carrying its four parts (compute, memory,
  network, fixed) plus pipeline wait and drafting in ms, its batch size, prefill and decode
  tokens, KV blocks in use, queue length and preemptions; with ``pp > 1`` one thread per
  stage with the time each micro-batch held that stage;
* each request as asynchronous slices ("b"/"e", id = request id) under the replica that
  served it: ``queued`` (arrival to the start of the first step that computed any of its
  prompt), ``prefill`` (to its first token) and ``decode`` (to its last); a request a stopped
  run left ends where the run stopped; rejected requests as instant events on ``router``;
* under message fidelity, a ``network`` process: every hop of every message as a slice on
  its link direction's thread (the time the link was reserved for it, FIFO behind earlier
  messages) and every collective as a slice on its rank group's thread.

Timestamps are simulated microseconds. ``output.timeline_window_s=[start, end]`` keeps only
what overlaps that window of simulated seconds, which keeps a long run's trace small. Events
are streamed to a temporary file as they happen (memory does not grow with the run); the file
gets its final name when the run ends, stopped or not.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sim.observe import schemas
from sim.observe.recorder import temporary_path

ROUTER_PID = 0
NETWORK_PID = 1_000_000
STEPS_TID = 0
_US = 1e6
_STEP_COLUMNS = schemas.STEPS.names


def _us(t_s: float) -> float:
    return round(t_s * _US, 3)


def _ms(t_s: float) -> float:
    return round(t_s * 1e3, 6)


class Timeline:
    """Trace events of one run, streamed to ``path`` (final name once :meth:`close` d)."""

    def __init__(self, path: Path, window_s: Sequence[float] | None = None,
                 replica_names: Sequence[str] = ()) -> None:
        self.path = path
        self.start_s, self.end_s = (float(window_s[0]), float(window_s[1])) if window_s else (-math.inf, math.inf)
        self.events = 0
        self._threads: dict[tuple[int, int], str] = {}
        self._link_tids: dict[tuple[str, str], int] = {}
        self._group_tids: dict[tuple[str, ...], int] = {}
        self._replica_names = list(replica_names)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_path(path)
        self._file = open(self._tmp, "w")
        self._file.write('{"displayTimeUnit": "ms", "traceEvents": [\n')
        self._closed = False

    def overlaps(self, start_s: float, end_s: float) -> bool:
        return end_s >= self.start_s and start_s <= self.end_s

    def _emit(self, event: dict[str, Any]) -> None:
        if self.events:
            self._file.write(",\n")
        self._file.write(json.dumps(event, separators=(",", ":")))
        self.events += 1

    def _thread(self, pid: int, tid: int, name: str) -> None:
        self._threads.setdefault((pid, tid), name)

    # ----- steps ---------------------------------------------------------------------------
    def step(self, *values: Any) -> None:
        """One row of ``steps.parquet`` (values in schema order)."""
        if self.overlaps(values[2], values[2] + values[3]):
            self.steps(1, *values)

    def steps(self, rows: int, *values: Any) -> None:
        """``rows`` rows of ``steps.parquet``: values in schema order, each an array of
        ``rows`` values or one value for all."""
        cols = dict(zip(_STEP_COLUMNS, (np.broadcast_to(np.asarray(v), (rows,)) for v in values)))
        start, duration = cols["start_s"], cols["duration_s"]
        keep = np.flatnonzero((start + duration >= self.start_s) & (start <= self.end_s))
        for i in keep.tolist():
            row = {name: col[i].item() for name, col in cols.items()}
            replica = int(row["replica"])
            pid = replica + 1
            self._thread(pid, STEPS_TID, "steps")
            prefill, decode = row["prefill_tokens"], row["decode_tokens"]
            name = "mixed" if prefill and decode else "prefill" if prefill else "decode"
            self._emit({"ph": "X", "name": name, "cat": "step", "pid": pid, "tid": STEPS_TID,
                        "ts": _us(row["start_s"]), "dur": _us(row["duration_s"]),
                        "args": {"step": row["step"], "batch_size": row["batch_size"], "prefill_tokens": prefill,
                                 "decode_tokens": decode, "compute_ms": _ms(row["compute_s"]),
                                 "memory_ms": _ms(row["memory_s"]), "network_ms": _ms(row["network_s"]),
                                 "fixed_ms": _ms(row["fixed_s"]), "pipeline_wait_ms": _ms(row["pipeline_wait_s"]),
                                 "draft_ms": _ms(row["draft_s"]), "kv_blocks_used": row["kv_blocks_used"],
                                 "waiting": row["waiting"], "preempted": row["preempted"],
                                 "spec_proposed_tokens": row["spec_proposed_tokens"],
                                 "spec_accepted_tokens": row["spec_accepted_tokens"]}})

    def stage(self, replica: int, stage: int, start_s: float, end_s: float, batch_size: int) -> None:
        """A micro-batch held pipeline stage ``stage`` of ``replica`` from ``start_s`` to ``end_s``."""
        if self.overlaps(start_s, end_s):
            pid, tid = replica + 1, 1 + stage
            self._thread(pid, tid, f"stage {stage}")
            self._emit({"ph": "X", "name": f"stage {stage}", "cat": "stage", "pid": pid, "tid": tid,
                        "ts": _us(start_s), "dur": _us(end_s - start_s), "args": {"batch_size": batch_size}})

    # ----- requests ------------------------------------------------------------------------
    def request(self, row: tuple, end_s: float) -> None:
        """A row of ``requests.parquet`` as it is logged; ``end_s``: the simulated time now
        (where a request left unfinished by a stopped run ends)."""
        rid, arrival, prompt, output, replica, status, scheduled, first, finish = row[:9]
        if status == "rejected":
            if self.overlaps(arrival, arrival):
                self._thread(ROUTER_PID, 0, "rejected")
                self._emit({"ph": "i", "s": "t", "name": "rejected", "cat": "request", "pid": ROUTER_PID, "tid": 0,
                            "ts": _us(arrival), "args": {"request_id": rid, "prompt_tokens": prompt,
                                                          "output_tokens": output}})
            return
        last = finish if status == "completed" else end_s
        if replica < 0 or not self.overlaps(arrival, last):
            return
        pid = replica + 1
        bounds = [arrival]
        for t in (scheduled, first):
            if t == t:                           # not NaN: the phase began
                bounds.append(t)
        bounds.append(last)
        args = {"request_id": rid, "prompt_tokens": prompt, "output_tokens": output, "status": status,
                "preemptions": row[12]}
        for phase, (a, b) in zip(("queued", "prefill", "decode"), zip(bounds, bounds[1:])):
            event = {"cat": "request", "id": rid, "name": phase, "pid": pid, "tid": STEPS_TID}
            self._emit({**event, "ph": "b", "ts": _us(a), **({"args": args} if phase == "queued" else {})})
            self._emit({**event, "ph": "e", "ts": _us(b)})

    # ----- the network (message fidelity) --------------------------------------------------
    def hop(self, link: tuple[str, str], start_s: float, end_s: float, nbytes: float) -> None:
        """A message reserved ``link`` from ``start_s`` to ``end_s``."""
        if self.overlaps(start_s, end_s):
            tid = self._link_tids.setdefault(link, len(self._link_tids))
            self._thread(NETWORK_PID, tid, f"{link[0]} -> {link[1]}")
            self._emit({"ph": "X", "name": "message", "cat": "link", "pid": NETWORK_PID, "tid": tid,
                        "ts": _us(start_s), "dur": _us(end_s - start_s), "args": {"bytes": nbytes}})

    def collective(self, kind: str, ranks: Sequence[str], nbytes: float, start_s: float, end_s: float) -> None:
        """A collective over ``ranks`` from its call to its completion."""
        if self.overlaps(start_s, end_s):
            group = tuple(ranks)
            tid = 1_000 + self._group_tids.setdefault(group, len(self._group_tids))
            self._thread(NETWORK_PID, tid, f"collectives {group[0]}..{group[-1]} ({len(group)} ranks)")
            self._emit({"ph": "X", "name": kind, "cat": "collective", "pid": NETWORK_PID, "tid": tid,
                        "ts": _us(start_s), "dur": _us(end_s - start_s),
                        "args": {"bytes": nbytes, "ranks": len(group)}})

    # ----- the file ------------------------------------------------------------------------
    def _metadata(self) -> None:
        pids = sorted({pid for pid, _ in self._threads})
        for pid in pids:
            if pid == ROUTER_PID:
                name = "router"
            elif pid == NETWORK_PID:
                name = "network"
            else:
                k = pid - 1
                name = self._replica_names[k] if k < len(self._replica_names) else f"replica {k}"
            self._emit({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}})
            self._emit({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
        for (pid, tid), name in sorted(self._threads.items()):
            self._emit({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})

    def close(self) -> Path:
        """Name the tracks, finish the JSON and give the file its final name. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._metadata()
            window = None if math.isinf(self.start_s) and math.isinf(self.end_s) else [self.start_s, self.end_s]
            self._file.write("\n],\n" + json.dumps({"otherData": {"time_unit": "simulated microseconds",
                                                               "window_s": window}})[1:] + "\n")
            self._file.close()
            os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Leave no file (a run that failed)."""
        if not self._closed:
            self._closed = True
            self._file.close()
            self._tmp.unlink(missing_ok=True)
