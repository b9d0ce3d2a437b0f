"""Every command gives the outputs captured in ``tests/golden/data`` (see ``tests/golden/cases.py``).

Rule: Parquet tables equal column for column and value for value (bit-identical floats,
same names and types), ``summary.json`` and the commands' JSON lines equal with wall-clock
figures and paths left out, Markdown/YAML reports equal as text. The captures were taken
before the restructuring of issue 10, so this holds every command's behaviour across it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

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
    assert normalised(stdout_record(case, stdout), out) == (golden / "stdout.txt").read_text()
    for f in case.files:
        if f == "summary.json":
            assert stable_json(json.loads((out / f).read_text())) == json.loads((golden / f).read_text())
        elif f.endswith(TEXT_SUFFIXES):
            assert normalised((out / f).read_text(), out) == (golden / f).read_text(), f
        else:
            got, want = pq.read_table(out / f), pq.read_table(golden / f)
            assert got.schema.equals(want.schema), f"{f}: schema {got.schema} != {want.schema}"
            for name in want.column_names:
                assert got.column(name).equals(want.column(name)), f"{f}: column {name} differs"
