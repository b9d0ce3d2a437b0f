"""The steps recorder: rows in the order recorded across row-group boundaries, column sums as
they pass, and a file under its final name only once complete."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.observe.recorder import ColumnRecorder, write_json

SCHEMA = pa.schema([("replica", pa.int32()), ("step", pa.int64()), ("duration_s", pa.float64())])


def test_rows_and_spans_keep_their_order_and_sums(tmp_path):
    path = tmp_path / "steps.parquet"
    rec = ColumnRecorder(SCHEMA, path, batch_rows=4)
    rec.append(0, 0, 0.5)
    rec.extend(7, 1, np.arange(1, 8), np.linspace(0.1, 0.7, 7))
    rec.append(2, 8, 1.0)
    assert not path.exists()                      # still being written: no final name yet
    assert rec.close() == path and rec.close() == path
    t = pq.read_table(path)
    assert t.column("step").to_pylist() == list(range(9))
    assert t.column("replica").to_pylist() == [0] + [1] * 7 + [2]
    assert rec.rows == 9
    assert abs(rec.sums["duration_s"] - (0.5 + 2.8 + 1.0)) < 1e-12
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_nothing_recorded_still_gives_a_readable_empty_table(tmp_path):
    rec = ColumnRecorder(SCHEMA, tmp_path / "steps.parquet")
    rec.close()
    t = pq.read_table(tmp_path / "steps.parquet")
    assert t.num_rows == 0 and t.schema.equals(SCHEMA)


def test_without_a_path_rows_are_counted_and_summed_only():
    rec = ColumnRecorder(SCHEMA, None, batch_rows=2)
    for k in range(5):
        rec.append(0, k, 1.0)
    assert rec.close() is None and rec.rows == 5 and rec.sums["duration_s"] == 5.0


def test_json_is_written_whole(tmp_path):
    write_json({"a": 1}, tmp_path / "summary.json")
    assert (tmp_path / "summary.json").read_text() == '{\n  "a": 1\n}\n'


def test_latencies_read_back_from_the_file_equal_the_kept_ones(tmp_path):
    """A requests log written to a file keeps no latencies: the summary reads them back a
    column at a time, completed rows only, in request order -- the same numbers as kept."""
    from sim.observe.metrics import summarize
    from sim.observe.tables import NAN, RequestLog, request_row

    rng = np.random.default_rng(3)
    rows = []
    for r in range(23):
        arrival = float(r)
        status = ("completed", "completed", "rejected", "unfinished")[r % 4]
        if status == "completed":
            first = arrival + rng.uniform(0.1, 1.0)
            rows.append(request_row(r, arrival, 10, 1 + r % 3, 0, status, arrival + 0.05, first, first + r % 3, 0, r % 3))
        elif status == "unfinished":       # got its first token, never finished: not a completed latency
            rows.append(request_row(r, arrival, 10, 5, 0, status, arrival + 0.05, arrival + 0.5, NAN, 0, 1))
        else:
            rows.append(request_row(r, arrival, 10, 5, -1, status, NAN, NAN, NAN, 0, 0))
    order = rng.permutation(len(rows))
    logs = [RequestLog(len(rows), tmp_path / "requests.parquet", batch_rows=4), RequestLog(len(rows))]
    for log in logs:
        for i in order:
            log.log(rows[i])
        log.close()
    on_file, kept = (log.stats for log in logs)
    assert on_file.path is not None and kept.path is None
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        np.testing.assert_array_equal(on_file.latencies(name), kept.latencies(name))
    assert len(kept.latencies("e2e_s")) == on_file.completed == 12
    assert (summarize(on_file, {}, 0, wall_s=1.0, events=1, sim_time_s=1.0)
            == summarize(kept, {}, 0, wall_s=1.0, events=1, sim_time_s=1.0))
