"""``output.timeline=true`` writes ``timeline.json`` in the Chrome trace-event format (issue 12).

Checked here: the file is one JSON object whose ``traceEvents`` follow the trace-event schema
(phases X, b, e, i, M with their required fields; timestamps in simulated microseconds); one
step slice per row of ``steps.parquet`` carrying its parts, batch size and tokens; one track
per replica and, with pp > 1, per stage; each served request's queued/prefill/decode slices
in order, matching ``requests.parquet``; links and collectives under message fidelity; a
window keeps only what overlaps it; and the tables are the same with the timeline on or off.
"""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import run_sim

PHASES = {"X", "b", "e", "i", "M"}
STEP_ARGS = {"step", "batch_size", "prefill_tokens", "decode_tokens", "compute_ms", "memory_ms", "network_ms",
             "fixed_ms", "pipeline_wait_ms", "draft_ms", "kv_blocks_used", "waiting", "preempted"}


def _run(tmp_path, name: str, *overrides: str):
    out = tmp_path / name
    proc = run_sim("-m", "sim", f"hydra.run.dir={out}", "output.progress=never", *overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _events(out) -> list[dict]:
    trace = json.loads((out / "timeline.json").read_text())
    assert set(trace) >= {"traceEvents", "displayTimeUnit", "otherData"}
    events = trace["traceEvents"]
    for e in events:
        assert e["ph"] in PHASES, e
        assert isinstance(e["pid"], int) and isinstance(e["name"], str)
        if e["ph"] == "M":
            assert e["name"] in {"process_name", "thread_name", "process_sort_index"} and "args" in e
            continue
        assert isinstance(e["tid"], int) and isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0
        if e["ph"] in "be":
            assert isinstance(e["id"], int) and e["cat"] == "request"
    return events


def _named(events, pid: int) -> dict[int, str]:
    return {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"
            and e["pid"] == pid}


def _check_requests(events, out, window=None) -> None:
    req = pq.read_table(out / "requests.parquet").to_pydict()
    phases: dict[int, list[tuple[str, str, float]]] = defaultdict(list)
    for e in events:
        if e["ph"] in "be":
            phases[e["id"]].append((e["name"], e["ph"], e["ts"]))
    served = 0
    for i, rid in enumerate(req["request_id"]):
        if req["status"][i] != "completed":
            continue
        a, s, f, end = (req[k][i] * 1e6 for k in ("arrival_s", "scheduled_s", "first_token_s", "finish_s"))
        if window and not (end / 1e6 >= window[0] and a / 1e6 <= window[1]):
            assert rid not in phases
            continue
        served += 1
        got = phases[rid]
        assert [(n, p) for n, p, _ in got] == [("queued", "b"), ("queued", "e"), ("prefill", "b"),
                                               ("prefill", "e"), ("decode", "b"), ("decode", "e")]
        np.testing.assert_allclose([t for _, _, t in got], [a, s, s, f, f, end], rtol=0, atol=1e-3)
    assert served > 0


def test_steps_requests_and_stage_tracks_match_the_tables(tmp_path):
    common = ["workload.max_requests=40", "parallel.tp=4", "parallel.pp=2"]
    out = _run(tmp_path, "on", *common, "output.timeline=true")
    off = _run(tmp_path, "off", *common)
    assert not (off / "timeline.json").exists()
    for table in ("requests.parquet", "steps.parquet"):      # observing changes nothing
        assert pq.read_table(out / table).equals(pq.read_table(off / table))
    events = _events(out)
    steps = pq.read_table(out / "steps.parquet").to_pydict()
    slices = sorted((e for e in events if e["ph"] == "X" and e["cat"] == "step"), key=lambda e: e["args"]["step"])
    assert len(slices) == len(steps["step"])
    for e, i in zip(slices, np.argsort(steps["step"], kind="stable")):
        assert STEP_ARGS <= set(e["args"]) and e["pid"] == steps["replica"][i] + 1
        assert e["args"]["batch_size"] == steps["batch_size"][i]
        assert e["args"]["prefill_tokens"] == steps["prefill_tokens"][i]
        assert e["args"]["decode_tokens"] == steps["decode_tokens"][i]
        assert e["ts"] == pytest.approx(steps["start_s"][i] * 1e6, abs=1e-3)
        assert e["dur"] == pytest.approx(steps["duration_s"][i] * 1e6, abs=1e-3)
        parts = sum(e["args"][k] for k in ("compute_ms", "memory_ms", "network_ms", "fixed_ms", "pipeline_wait_ms"))
        assert parts * 1e3 == pytest.approx(e["dur"], rel=1e-6, abs=1e-2)
    assert set(_named(events, 1).values()) == {"steps", "stage 0", "stage 1"}
    stage = [e for e in events if e["ph"] == "X" and e["cat"] == "stage"]
    assert {e["tid"] for e in stage} == {1, 2} and len(stage) == 2 * len(slices)
    _check_requests(events, out)


def test_a_window_keeps_only_what_overlaps_it(tmp_path):
    window = (0.5, 1.2)
    out = _run(tmp_path, "w", "workload.max_requests=60", "output.timeline=true",
               f"output.timeline_window_s=[{window[0]},{window[1]}]")
    events = _events(out)
    xs = [e for e in events if e["ph"] == "X"]
    assert xs and all(e["ts"] <= window[1] * 1e6 + 1e-3 and e["ts"] + e["dur"] >= window[0] * 1e6 - 1e-3 for e in xs)
    steps = pq.read_table(out / "steps.parquet").to_pydict()
    start, dur = np.array(steps["start_s"]), np.array(steps["duration_s"])
    assert len(xs) == int(np.sum((start + dur >= window[0]) & (start <= window[1]))) < len(start)
    _check_requests(events, out, window)
    assert json.loads((out / "timeline.json").read_text())["otherData"]["window_s"] == list(window)


def test_message_fidelity_shows_links_and_collectives(tmp_path):
    out = _run(tmp_path, "m", "workload.max_requests=3", "network.fidelity=message", "output.timeline=true",
               "debug.check_invariants=true")
    events = _events(out)
    hops = [e for e in events if e["ph"] == "X" and e["cat"] == "link"]
    colls = [e for e in events if e["ph"] == "X" and e["cat"] == "collective"]
    assert hops and colls and {e["name"] for e in colls} <= {"allreduce", "allgather"}
    assert json.loads((out / "summary.json").read_text())["sim"]["link_hops"] == len(hops)
    names = _named(events, hops[0]["pid"])
    assert all(" -> " in names[e["tid"]] for e in hops)
    # a link serves one message at a time, in order (FIFO): its slices never overlap
    by_link = defaultdict(list)
    for e in hops:
        by_link[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_link.values():
        spans.sort()
        assert all(b0 >= a1 - 1e-3 for (_, a1), (b0, _) in zip(spans, spans[1:]))


@pytest.mark.parametrize("value", ["[3,1]", "[-1,2]", "[1]", "[a,b]", "5"])
def test_a_bad_window_is_one_line(tmp_path, value):
    proc = run_sim("-m", "sim", f"hydra.run.dir={tmp_path / 'x'}", "output.timeline=true",
                   f"output.timeline_window_s={value}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: output.timeline_window_s=") and "Traceback" not in proc.stderr
