"""Every command gives the outputs captured in ``tests/golden/data`` (see ``tests/golden/cases.py``).

Rule: Parquet tables equal column for column and value for value (bit-identical floats,
same names and types), ``summary.json`` and the commands' JSON lines equal with wall-clock
figures and paths left out, Markdown/YAML reports equal as text. The captures were taken
before the restructuring of issue 10, so this holds every command's behaviour across it.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from cases import CASES, DATA, TEXT_SUFFIXES, normalised, run_case, stable_json, stdout_record  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_command_reproduces_its_golden_outputs(case, tmp_path):
    missing = [p for p in case.needs if not p.exists()]
    if missing:
        pytest.skip(f"input not present: {missing[0]}")
    out = tmp_path / "out"
    stdout = run_case(case, out)
    golden = DATA / case.name
    record = normalised(stdout_record(case, stdout), out)
    if case.fit_rel_tol and case.stdout_json:
        assert close(json.loads(record), json.loads((golden / "stdout.txt").read_text()), case.fit_rel_tol)
    elif case.fit_rel_tol:    # line by line, JSON lines within the tolerance
        got_lines, want_lines = record.splitlines(), (golden / "stdout.txt").read_text().splitlines()
        assert len(got_lines) == len(want_lines)
        for g, w in zip(got_lines, want_lines):
            assert close_text(g, w, case.fit_rel_tol), (g, w)
    else:
        assert record == (golden / "stdout.txt").read_text()
    for f in case.files:
        if f == "summary.json":
            assert stable_json(json.loads((out / f).read_text())) == json.loads((golden / f).read_text())
        elif f.endswith(TEXT_SUFFIXES) and case.fit_rel_tol:
            assert close_text(normalised((out / f).read_text(), out), (golden / f).read_text(), case.fit_rel_tol), f
        elif f.endswith(TEXT_SUFFIXES):
            assert normalised((out / f).read_text(), out) == (golden / f).read_text(), f
        else:
            got, want = pq.read_table(out / f), pq.read_table(golden / f)
            assert got.schema.equals(want.schema), f"{f}: schema {got.schema} != {want.schema}"
            for name in want.column_names:
                if case.fit_rel_tol and pa.types.is_floating(want.schema.field(name).type):
                    assert close(got.column(name).to_pylist(), want.column(name).to_pylist(), case.fit_rel_tol), \
                        f"{f}: column {name} differs beyond {case.fit_rel_tol}"
                else:
                    assert got.column(name).equals(want.column(name)), f"{f}: column {name} differs"


def close(got, want, rel: float) -> bool:
    """Same structure, equal values, floats within ``rel`` of each other (or both 0 / None / NaN)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(close(got[k], want[k], rel) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(close(g, w, rel) for g, w in zip(got, want))
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return (math.isnan(want) and math.isnan(got)) or math.isclose(got, want, rel_tol=rel, abs_tol=1e-9)
    return got == want


NUMBER = re.compile(r"(-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+)")


def close_text(got: str, want: str, rel: float) -> bool:
    """Equal text except that decimal numbers may differ within ``rel`` (one digit of a rounded
    figure flipping included: 4 significant digits move by at most 1e-3)."""
    g, w = NUMBER.split(got), NUMBER.split(want)
    if len(g) != len(w):
        return False
    for i, (a, b) in enumerate(zip(g, w)):
        if i % 2 == 0:
            if a != b:
                return False
        elif not math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-9):
            return False
    return True


def test_close_tolerates_only_small_float_differences():
    assert close_text("fit 2.7100 us, 62 rows", "fit 2.7101 us, 62 rows", 1e-3)
    assert not close_text("fit 2.7100 us, 62 rows", "fit 2.7100 us, 63 rows", 1e-3)
    assert not close_text("fit 2.71 us", "fit 2.80 us", 1e-3)
    assert close({"a": [1.0, None, "x"]}, {"a": [1.0 + 1e-6, None, "x"]}, 1e-3)
    assert not close({"a": [1.01]}, {"a": [1.0]}, 1e-3)
    assert not close({"a": 1.0}, {"b": 1.0}, 1e-3) and not close(["x"], ["y"], 1e-3)
