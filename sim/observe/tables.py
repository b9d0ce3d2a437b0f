"""``requests.parquet``, written in request order as requests finish (schema in
:mod:`sim.observe.schemas`).

Requests finish out of order; :class:`RequestLog` holds a finished request's row only until
every earlier request has been logged, then streams it into a
:class:`~sim.observe.recorder.ColumnRecorder` (Parquet row groups as the run goes, or record
batches kept in memory without a path). Memory therefore grows with the requests in flight,
not with the trace. The latency columns are derived from each row's timestamps:
``ttft_s = first_token_s - arrival_s``, ``tpot_s = (finish_s - first_token_s) /
(output_tokens - 1)`` (NaN for one output token), ``e2e_s = finish_s - arrival_s``,
``tokens_per_pass = (output_tokens - 1) / decode_passes`` (NaN without a decode pass).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from sim.observe import schemas
from sim.observe.metrics import RequestStats
from sim.observe.recorder import ColumnRecorder

NAN = float("nan")


def request_row(request_id: int, arrival: float, prompt: int, output: int, replica: int, status: str,
                scheduled: float, first: float, finish: float, preemptions: int, passes: int,
                cached: int = 0, priority: int = 0, restarts: int = 0) -> tuple:
    """One row of ``requests.parquet`` in schema order, latencies derived."""
    return (request_id, arrival, prompt, output, replica, status, scheduled, first, finish, first - arrival,
            (finish - first) / (output - 1) if output > 1 else NAN, finish - arrival, preemptions, passes,
            (output - 1) / passes if passes > 0 else NAN, cached, priority, restarts)


class RequestLog:
    """Rows of ``requests.parquet`` in request order, whatever order they are logged in."""

    def __init__(self, total: int, path: Path | None = None, batch_rows: int = 65536,
                 check: Callable[[tuple], None] | None = None) -> None:
        """``check``: called with every row as it is logged (run-time invariants)."""
        self.total = total
        self.check = check
        self.path = path
        self._rows = ColumnRecorder(schemas.REQUESTS, path, batch_rows, keep=path is None)
        self._waiting: dict[int, tuple] = {}     # logged rows behind an earlier request not yet logged
        self.stats = RequestStats(path)           # what the summary needs, gathered in request order
        self.next_id = 0                          # every request before it has been written

    def log(self, row: tuple) -> None:
        """A request's row (from :func:`request_row`)."""
        rid = row[0]
        if self.check is not None:
            self.check(row)
        if rid != self.next_id:
            self._waiting[rid] = row
            return
        append, waiting, add = self._rows.append, self._waiting, self.stats.add
        append(*row)
        add(row)
        rid += 1
        while rid in waiting:
            row = waiting.pop(rid)
            append(*row)
            add(row)
            rid += 1
        self.next_id = rid

    def log_unarrived(self, arrival_s: np.ndarray, prompt: np.ndarray, output: np.ndarray,
                      priority: np.ndarray | None = None) -> None:
        """Requests ``next_id`` and on, which never arrived (a stopped run): status ``unfinished``."""
        if self._waiting:
            raise RuntimeError(f"requests {sorted(self._waiting)[:3]}... logged before request {self.next_id}")
        start, n = self.next_id, self.total
        self.stats.add_unarrived(arrival_s[start:n])
        step = self._rows.batch_rows
        for a in range(start, n, step):
            b = min(n, a + step)
            out = output[a:b]
            self._rows.extend(b - a, np.arange(a, b, dtype=np.int64), arrival_s[a:b], prompt[a:b], out, -1,
                              "unfinished", NAN, NAN, NAN, NAN, NAN, NAN, 0, 0, NAN, 0,
                              0 if priority is None else priority[a:b], 0)
        self.next_id = n

    def discard(self) -> None:
        """Stop writing and leave no file (a run that failed)."""
        self._rows.discard()

    def close(self) -> pa.Table | Path:
        """Finish the file (its final name once complete) and return its path; without a path,
        the table."""
        if self.next_id != self.total or self._waiting:
            raise RuntimeError(f"requests.parquet incomplete: {self.next_id} of {self.total} requests logged")
        self._rows.close()
        if self.path is not None:
            return self.path
        return self._rows.table()
