"""Trace readers and bundled traces: real data, malformed files, round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workloads import (
    BUNDLED_TRACES,
    RequestTable,
    WorkloadError,
    bundled_trace_path,
    load_bundled,
    read_azure_csv,
    read_mooncake_jsonl,
    read_plain,
    read_trace,
)

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def azure_rows(n: int) -> list[str]:
    return [f"2023-11-16 18:17:{i:02d}.5000000,{100 + i},{1 + i}\n" for i in range(n)]


# --------------------------------------------------------------------------- bundled


@pytest.fixture(scope="module")
def azure() -> RequestTable:
    return load_bundled("azure_code")


@pytest.fixture(scope="module")
def mooncake() -> RequestTable:
    return load_bundled("mooncake_synthetic")


def test_bundled_azure(azure):
    assert len(azure) == 8819
    assert azure.arrival_s[0] == 0.0
    assert np.all(np.diff(azure.arrival_s) >= 0)
    # 2023-11-16 18:17:03.9799600 .. 19:14:19.9280160
    assert azure.duration_s == pytest.approx(3435.948056, abs=1e-9)
    assert 3000 < azure.duration_s < 3700  # about an hour
    assert azure.prefix_block_ids is None
    assert azure.clamped_rows == 0
    assert azure.prompt_tokens.min() >= 1 and azure.output_tokens.min() >= 1
    assert azure.prompt_tokens[:2].tolist() == [4808, 3180]
    assert azure.output_tokens[:2].tolist() == [10, 8]
    assert azure.arrival_s[1] == pytest.approx(0.052, abs=1e-12)
    assert azure.source == "azure_llm_2023_code.csv"


def test_bundled_mooncake(mooncake):
    assert len(mooncake) == 3993
    assert mooncake.arrival_s[0] == 0.0
    assert np.all(np.diff(mooncake.arrival_s) >= 0)
    assert mooncake.duration_s == pytest.approx(1022.025)
    assert mooncake.prefix_block_ids is not None and len(mooncake.prefix_block_ids) == 3993
    assert mooncake.prefix_block_tokens == 512
    # one hash id per 512-token prompt block
    n_blocks = np.array([ids.size for ids in mooncake.prefix_block_ids])
    np.testing.assert_array_equal(n_blocks, -(-mooncake.prompt_tokens // 512))
    assert mooncake.prefix_block_ids[0][:3].tolist() == [0, 1, 2]
    assert mooncake.prompt_tokens[0] == 40160 and mooncake.output_tokens[0] == 6
    # the trace carries prefix reuse: fewer unique blocks than blocks
    all_ids = np.concatenate(mooncake.prefix_block_ids)
    assert np.unique(all_ids).size < all_ids.size


def test_bundled_paths_and_names():
    assert set(BUNDLED_TRACES) == {"azure_code", "mooncake_synthetic"}
    for name in BUNDLED_TRACES:
        assert bundled_trace_path(name).is_file()
    assert (bundled_trace_path("azure_code").parent / "ATTRIBUTION.md").is_file()
    with pytest.raises(WorkloadError, match="azure_code.*mooncake_synthetic"):
        bundled_trace_path("nope")


def test_read_trace_auto_detects_bundled(azure, mooncake):
    auto_azure = read_trace(bundled_trace_path("azure_code"))
    np.testing.assert_array_equal(auto_azure.arrival_s, azure.arrival_s)
    auto_moon = read_trace(bundled_trace_path("mooncake_synthetic"))
    assert auto_moon.prefix_block_ids is not None and len(auto_moon) == len(mooncake)


# --------------------------------------------------------------------------- Azure


def test_azure_exact_timestamp_arithmetic(tmp_path):
    p = write(
        tmp_path / "a.csv",
        AZURE_HEADER
        + "2023-11-16 23:59:59.9999999,1,1\n"
        + "2023-11-17 00:00:00.0000001,1,1\n"
        + "2023-11-17 00:00:01,1,1\n",
    )
    t = read_azure_csv(p)
    assert t.arrival_s[1] == 2 / 1e7
    assert t.arrival_s[2] == 10_000_001 / 1e7


def test_azure_unsorted_rows_are_sorted_stably(tmp_path):
    p = write(
        tmp_path / "a.csv",
        AZURE_HEADER
        + "2023-11-16 18:00:05.0000000,5,1\n"
        + "2023-11-16 18:00:01.0000000,1,1\n"
        + "2023-11-16 18:00:05.0000000,6,1\n"
        + "2023-11-16 18:00:03.0000000,3,1\n",
    )
    t = read_azure_csv(p)
    np.testing.assert_array_equal(t.arrival_s, [0.0, 2.0, 4.0, 4.0])
    np.testing.assert_array_equal(t.prompt_tokens, [1, 3, 5, 6])


def test_azure_zero_lengths_are_clamped_and_counted(tmp_path):
    p = write(
        tmp_path / "a.csv",
        AZURE_HEADER
        + "2023-11-16 18:00:00.0,0,5\n"
        + "2023-11-16 18:00:01.0,7,0\n"
        + "2023-11-16 18:00:02.0,0,0\n"
        + "2023-11-16 18:00:03.0,4,4\n",
    )
    t = read_azure_csv(p)
    assert t.clamped_rows == 3
    np.testing.assert_array_equal(t.prompt_tokens, [1, 7, 1, 4])
    np.testing.assert_array_equal(t.output_tokens, [5, 1, 1, 4])


@pytest.mark.parametrize(
    "bad_row, fragment",
    [
        ("2023-11-16 18:17:20.0,abc,3\n", "ContextTokens='abc' is not a non-negative integer"),
        ("2023-11-16 18:17:20.0,12,-3\n", "GeneratedTokens='-3' is not a non-negative integer"),
        ("2023-11-16 18:17:20.0,12.5,3\n", "ContextTokens='12.5'"),
        ("yesterday,12,3\n", "TIMESTAMP='yesterday' is not a timestamp"),
        ("2023-13-16 18:17:20.0,12,3\n", "TIMESTAMP="),
        ("2023-11-16 18:17:20.0,12\n", "has 2 fields"),
    ],
)
def test_azure_malformed_row_reports_line(tmp_path, bad_row, fragment):
    rows = azure_rows(15)
    rows.insert(15, bad_row)  # header is line 1, so this is line 17
    p = write(tmp_path / "trace.csv", AZURE_HEADER + "".join(rows) + azure_rows(20)[-1])
    with pytest.raises(WorkloadError) as info:
        read_azure_csv(p)
    message = str(info.value)
    assert message.startswith("trace.csv line 17: ")
    assert fragment in message
    assert "\n" not in message


def test_azure_missing_column(tmp_path):
    p = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:20.0,1\n")
    with pytest.raises(WorkloadError, match="missing column 'GeneratedTokens'"):
        read_azure_csv(p)


@pytest.mark.parametrize("text", ["", "\n\n", AZURE_HEADER, AZURE_HEADER + "\n"])
def test_azure_empty(tmp_path, text):
    p = write(tmp_path / "a.csv", text)
    with pytest.raises(WorkloadError, match="a.csv"):
        read_azure_csv(p)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "does_not_exist.csv"
    for reader in (read_azure_csv, read_mooncake_jsonl, read_plain, read_trace):
        with pytest.raises(WorkloadError, match="does_not_exist.csv"):
            reader(missing)
    with pytest.raises(WorkloadError, match="not a regular file"):
        read_trace(tmp_path)


# --------------------------------------------------------------------------- Mooncake


def mooncake_line(ts, inp=600, out=3, ids=(0, 1)) -> str:
    return json.dumps({"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": list(ids)}) + "\n"


def test_mooncake_reader_units_and_stable_order(tmp_path):
    p = write(
        tmp_path / "m.jsonl",
        mooncake_line(1500, inp=1, ids=[7])
        + mooncake_line(500, inp=2, ids=[1, 2])
        + "\n"
        + mooncake_line(1500, inp=3, ids=[7, 8])
        + mooncake_line(0, inp=4, ids=[]),
    )
    t = read_mooncake_jsonl(p)
    np.testing.assert_array_equal(t.arrival_s, [0.0, 0.5, 1.5, 1.5])
    np.testing.assert_array_equal(t.prompt_tokens, [4, 2, 1, 3])
    assert [ids.tolist() for ids in t.prefix_block_ids] == [[], [1, 2], [7], [7, 8]]


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        ("{not json\n", "invalid JSON"),
        ("[1, 2]\n", "expected a JSON object"),
        (json.dumps({"timestamp": 1, "input_length": 5, "output_length": 1}) + "\n", "missing key 'hash_ids'"),
        (mooncake_line(-5), "timestamp=-5"),
        (mooncake_line("soon"), "timestamp='soon'"),
        (mooncake_line(10, inp="abc"), "input_length='abc' is not a non-negative integer"),
        (mooncake_line(10, out=2.5), "output_length=2.5"),
        (mooncake_line(10, out=-1), "output_length=-1"),
        (mooncake_line(10, ids=["a"]), "hash_ids="),
    ],
)
def test_mooncake_malformed_line_reports_line(tmp_path, bad_line, fragment):
    text = "".join(mooncake_line(i) for i in range(4)) + bad_line + mooncake_line(99)
    p = write(tmp_path / "m.jsonl", text)
    with pytest.raises(WorkloadError) as info:
        read_mooncake_jsonl(p)
    assert str(info.value).startswith("m.jsonl line 5: ")
    assert fragment in str(info.value)


def test_mooncake_empty(tmp_path):
    with pytest.raises(WorkloadError, match="no requests"):
        read_mooncake_jsonl(write(tmp_path / "m.jsonl", "\n"))


# --------------------------------------------------------------------------- plain


def test_plain_csv_round_trip_with_extra_columns(tmp_path):
    p = write(
        tmp_path / "p.csv",
        "request_id,arrival_s,prompt_tokens,output_tokens,note\n"
        "a,0.25,100,10,x\n"
        "b,1.75,200.0,20,y\n"
        "c,1.0,300,0,z\n",
    )
    t = read_plain(p)
    np.testing.assert_array_equal(t.arrival_s, [0.0, 0.75, 1.5])
    np.testing.assert_array_equal(t.prompt_tokens, [100, 300, 200])
    np.testing.assert_array_equal(t.output_tokens, [10, 1, 20])
    assert t.clamped_rows == 1
    assert read_trace(p).source == "p.csv"


def test_plain_parquet_round_trip(tmp_path):
    original = load_bundled("azure_code").take(500)
    path = tmp_path / "t.parquet"
    pq.write_table(original.to_arrow(), path)
    for t in (read_plain(path), read_trace(path), read_trace(path, format="plain")):
        np.testing.assert_array_equal(t.arrival_s, original.arrival_s)
        np.testing.assert_array_equal(t.prompt_tokens, original.prompt_tokens)
        np.testing.assert_array_equal(t.output_tokens, original.output_tokens)


def test_plain_csv_via_to_arrow_round_trip(tmp_path):
    import pyarrow.csv as pacsv

    original = load_bundled("mooncake_synthetic").take(300)
    path = tmp_path / "t.csv"
    pacsv.write_csv(original.to_arrow(), path)
    t = read_trace(path)
    np.testing.assert_array_equal(t.arrival_s, original.arrival_s)
    np.testing.assert_array_equal(t.prompt_tokens, original.prompt_tokens)


def test_plain_missing_column_csv_and_parquet(tmp_path):
    p = write(tmp_path / "p.csv", "arrival_s,prompt_tokens\n0,1\n")
    with pytest.raises(WorkloadError, match="missing column 'output_tokens'"):
        read_plain(p)
    q = tmp_path / "q.parquet"
    pq.write_table(pa.table({"arrival_s": [0.0], "output_tokens": [1]}), q)
    with pytest.raises(WorkloadError, match="q.parquet: missing column 'prompt_tokens'"):
        read_plain(q)


def test_plain_csv_bad_value_reports_line(tmp_path):
    p = write(tmp_path / "p.csv", "arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,2,2\n2,x,3\n")
    with pytest.raises(WorkloadError, match=r"^p.csv line 4: prompt_tokens='x' is not a non-negative integer$"):
        read_plain(p)
    p = write(tmp_path / "p.csv", "arrival_s,prompt_tokens,output_tokens\n0,1,1\nnan,2,2\n")
    with pytest.raises(WorkloadError, match="p.csv line 3: arrival_s='nan'"):
        read_plain(p)


def test_plain_parquet_bad_values(tmp_path):
    q = tmp_path / "q.parquet"
    pq.write_table(pa.table({"arrival_s": [0.0, 1.0], "prompt_tokens": [1.0, 2.5], "output_tokens": [1, 1]}), q)
    with pytest.raises(WorkloadError, match="q.parquet row 2: prompt_tokens=2.5"):
        read_plain(q)
    pq.write_table(pa.table({"arrival_s": ["a"], "prompt_tokens": [1], "output_tokens": [1]}), q)
    with pytest.raises(WorkloadError, match="'arrival_s' has type string"):
        read_plain(q)
    pq.write_table(pa.table({"arrival_s": [0.0, 1.0], "prompt_tokens": [1, 2],
                             "output_tokens": pa.array([1, None], pa.int64())}), q)
    with pytest.raises(WorkloadError, match="row 2: output_tokens is null"):
        read_plain(q)
    pq.write_table(pa.table({"arrival_s": pa.array([], pa.float64()), "prompt_tokens": pa.array([], pa.int64()),
                             "output_tokens": pa.array([], pa.int64())}), q)
    with pytest.raises(WorkloadError, match="no requests"):
        read_plain(q)


# --------------------------------------------------------------------------- dispatch


def test_read_trace_format_argument(tmp_path):
    with pytest.raises(WorkloadError, match=r"format='xml'.*'auto', 'azure', 'mooncake', 'plain'"):
        read_trace(bundled_trace_path("azure_code"), format="xml")
    p = write(tmp_path / "weird.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(WorkloadError, match="matches no known trace format"):
        read_trace(p)
    # unknown extension: sniffed from content
    j = write(tmp_path / "trace.txt", mooncake_line(0) + mooncake_line(1000))
    assert read_trace(j).duration_s == 1.0
    a = write(tmp_path / "trace.dat", AZURE_HEADER + "".join(azure_rows(3)))
    assert len(read_trace(a)) == 3
    # explicit format overrides the extension
    assert len(read_trace(a, format="azure")) == 3


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10**6),  # arrival in ms
            st.integers(min_value=0, max_value=10**5),
            st.integers(min_value=0, max_value=10**4),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_property_plain_csv_reader(tmp_path, rows):
    p = tmp_path / "prop.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{a / 1000},{i},{o}\n" for a, i, o in rows))
    t = read_plain(p)
    assert len(t) == len(rows)
    assert t.arrival_s[0] == 0.0
    assert np.all(np.diff(t.arrival_s) >= 0)
    assert t.prompt_tokens.min() >= 1 and t.output_tokens.min() >= 1
    assert t.clamped_rows == sum(1 for _, i, o in rows if i == 0 or o == 0)
    assert sorted(t.prompt_tokens.tolist()) == sorted(max(i, 1) for _, i, _ in rows)
    assert math.isclose(t.duration_s, (max(a for a, _, _ in rows) - min(a for a, _, _ in rows)) / 1000, abs_tol=1e-9)
