"""Observation kept apart from the model: column buffers written to Parquet in batches."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class ColumnRecorder:
    """Appends rows as columns; flushes a record batch every ``batch_rows`` rows to a writer."""

    def __init__(self, schema: pa.Schema, path: Path | None = None, batch_rows: int = 65536) -> None:
        self.schema = schema
        self.names = schema.names
        self.columns: dict[str, list] = {n: [] for n in self.names}
        self.batches: list[pa.RecordBatch] = []
        self.batch_rows = batch_rows
        self.rows = 0

    def append(self, *values) -> None:
        for name, v in zip(self.names, values):
            self.columns[name].append(v)
        self.rows += 1
        if len(self.columns[self.names[0]]) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self.columns[self.names[0]]:
            self.batches.append(pa.RecordBatch.from_pydict(self.columns, schema=self.schema))
            self.columns = {n: [] for n in self.names}

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self.batches, schema=self.schema)


def write_table(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
