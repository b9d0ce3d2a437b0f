"""Observation kept apart from the model: column buffers streamed to Parquet in row groups,
and outputs that are never half-written.

Every output file is written under a temporary name in its directory and renamed over its
final name only once complete (``os.replace`` is atomic on one filesystem), so a file under
its final name is always readable, whenever the run is stopped.
"""
from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_table(table: pa.Table, path: Path) -> Path:
    """``table`` to Parquet at ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def write_text(text: str, path: Path) -> Path:
    """``text`` to ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(value: Any, path: Path) -> Path:
    return write_text(json.dumps(value, indent=2) + "\n", path)


def rows_table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    """A few rows (tuples in ``schema``'s column order, e.g. one per fault) as a table."""
    columns: list[Any] = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.table([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)


def use_returning_allocator() -> None:
    """Give Arrow's buffers (Parquet encoding on the writer thread) to jemalloc, which hands
    freed pages back to the system, instead of pyarrow's default mimalloc, which keeps them:
    a 100,000-request run peaks at ~155 MB instead of ~190 MB. Process-wide; called by the
    command-line entry before any table exists. Falls back to the system allocator."""
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)


class ColumnRecorder:
    """Rows written into preallocated column buffers; every ``batch_rows`` rows become a
    record batch, written to ``path`` as a Parquet row group as the run goes (memory stays
    flat; without a path the rows are only counted and summed). Floating-point columns are
    summed as they pass (:attr:`sums`), so a summary needs no second read of the table.

    Row groups are encoded and written by one background thread (pyarrow releases the GIL
    while it does), at most ``MAX_PENDING`` batches behind the run, in order.
    """

    MAX_PENDING = 2

    def __init__(self, schema: pa.Schema, path: Path | None = None, batch_rows: int = 65536,
                 keep: bool = False, summed: bool = True) -> None:
        """``keep``: also keep the record batches (for :meth:`table`); ``summed``: sum the
        floating-point columns."""
        self.schema = schema
        self._kept: list[pa.RecordBatch] | None = [] if keep else None
        self.names = schema.names
        self.path, self.batch_rows = path, batch_rows
        # one preallocated numpy buffer per column; rows are written in place
        self._bufs = [np.empty(batch_rows, dtype=f.type.to_pandas_dtype()) for f in schema]
        self._pos = 0
        self.rows = 0
        self.sums = {f.name: 0.0 for f in schema if summed and pa.types.is_floating(f.type)}
        self._writer: pq.ParquetWriter | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self._closed = False

    def append(self, *values) -> None:
        """One row, its values in schema order."""
        pos = self._pos
        for buf, v in zip(self._bufs, values):
            buf[pos] = v
        self._pos = pos + 1
        if self._pos == self.batch_rows:
            self._flush_rows()

    def extend(self, rows: int, *values) -> None:
        """``rows`` rows at once, values in schema order: each a numpy array of ``rows`` values
        or one value repeated."""
        pos = self._pos
        if pos + rows < self.batch_rows:     # the common case: the rows fit in the open batch
            end = pos + rows
            for buf, v in zip(self._bufs, values):
                buf[pos:end] = v
            self._pos = end
            return
        done = 0
        while done < rows:
            take = min(rows - done, self.batch_rows - self._pos)
            pos = self._pos
            for buf, v in zip(self._bufs, values):
                buf[pos:pos + take] = v[done:done + take] if isinstance(v, np.ndarray) else v
            self._pos = pos + take
            done += take
            if self._pos == self.batch_rows:
                self._flush_rows()

    def _flush_rows(self) -> None:
        if self._pos:
            arrays = [pa.array(buf[:self._pos], type=f.type) for buf, f in zip(self._bufs, self.schema)]
            self._emit(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
            self._bufs = [np.empty_like(buf) for buf in self._bufs]   # the batch may still view the old ones
            self._pos = 0

    def _emit(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        if self._kept is not None:
            self._kept.append(batch)
        for name in self.sums:
            total = pc.sum(batch.column(name)).as_py()
            if total is not None:
                self.sums[name] += total
        if self.path is not None:
            if self._writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # no dictionary pages: step columns are numbers that rarely repeat (2.6x faster)
                self._writer = pq.ParquetWriter(temporary_path(self.path), self.schema, use_dictionary=False)
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
            assert self._thread is not None
            self._pending.append(self._thread.submit(self._writer.write_batch, batch))
            while len(self._pending) > self.MAX_PENDING:
                self._pending.popleft().result()

    def _drain(self) -> None:
        """Wait for the row groups in flight (re-raising a write error here)."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._thread is not None:
                self._thread.shutdown(wait=True)
                self._thread = None

    def discard(self) -> None:
        """Stop recording and remove the partial file (nothing under the final name)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._drain()
        finally:
            if self._writer is not None:
                self._writer.close()
                temporary_path(self.path).unlink(missing_ok=True)  # type: ignore[arg-type]

    def close(self) -> Path | None:
        """Flush what is buffered and give the file its final name (an empty table if no row
        was recorded). Safe to call twice."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            self._flush_rows()
        finally:
            self._drain()
        if self.path is None:
            return None
        if self._writer is None:
            write_table(self.schema.empty_table(), self.path)
        else:
            self._writer.close()
            os.replace(temporary_path(self.path), self.path)
        return self.path

    def table(self) -> pa.Table:
        """Every row recorded, as one table (a recorder made with ``keep=True``, once closed)."""
        if self._kept is None or not self._closed:
            raise RuntimeError("table() needs a closed recorder made with keep=True")
        return pa.Table.from_batches(self._kept, schema=self.schema)
