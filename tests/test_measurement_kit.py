"""The measurement kit (``kit/``) on a CPU: its output must be readable by the simulator.

``kit/measure_steps.py`` runs on a toy model with a tiny grid; every row must parse with
``sim.calibration.read_measurements`` and ``fit_engine`` must run on it (no accuracy claim:
CPU timings say nothing about a GPU). The decoder itself is checked for causal masking and
decode/prefill consistency. ``kit/measure_collectives.py`` runs with 2 gloo processes under
torchrun; its table must have nccl-tests' layout and arithmetic (algbw = size/time, busbw =
algbw x 2(n-1)/n for all_reduce, x (n-1)/n for all_gather) and read back through
``sim.nccl_log`` where that module exists.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
STEPS = REPO / "kit" / "measure_steps.py"
COLLECTIVES = REPO / "kit" / "measure_collectives.py"

BATCH, CONTEXT, NEW_TOKENS, PROMPT = (1, 2), (8, 32), (1, 3), (8, 24)
TIED_SHAPE = "name=toytied,h=32,L=3,nh=4,nkv=1,hd=8,ffn=64,vocab=128,tie=1"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def steps_mod():
    return _load(STEPS, "kit_measure_steps")


@pytest.fixture(scope="module")
def steps_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("kit") / "cpu_steps.jsonl"
    cmd = [sys.executable, str(STEPS), "--device", "cpu", "--quiet",
           "--model", "tiny", "--shape", TIED_SHAPE, "--layers", "2",
           "--batch", ",".join(map(str, BATCH)), "--context", ",".join(map(str, CONTEXT)),
           "--new-tokens", ",".join(map(str, NEW_TOKENS)), "--prompt", ",".join(map(str, PROMPT)),
           "--modes", "graph,eager", "--warmup", "1", "--repeats", "3",
           "--gemm-m", "1,16", "--gemm-k", "64", "--gemm-n", "128", "--gemm-peak", "64",
           "--copy-bytes", "1048576", "--launch-kernels", "50", "--mixed", "6:2:8", "--ragged-prefill", "4+12",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_steps_rows_have_the_shared_format(steps_file):
    rows = _rows(steps_file)
    assert rows[0]["kind"] == "device" and rows[0]["torch"] == torch.__version__
    kinds = {r["kind"] for r in rows}
    assert {"device", "model", "decode", "prefill", "gemm_sweep", "gemm_peak", "copy_bw", "launch"} <= kinds
    # CPU: graph mode is skipped with a note, never silently reported as graph
    assert any(r["kind"] == "note" and "graph" in r["text"] for r in rows)
    assert all(r.get("mode") != "graph" for r in rows)
    models = {r["model"]: r for r in rows if r["kind"] == "model"}
    assert set(models) == {"tiny", "toytied-L2"}
    # --layers 2 truncates the 3-layer shape; the row reports what was built
    assert models["toytied-L2"]["L"] == 2 and models["toytied-L2"]["L_full"] == 3
    assert models["tiny"]["L"] == 2 and "L_full" not in models["tiny"]
    for name in models:
        decode = {(r["B"], r["S"], r["T"]) for r in rows if r["kind"] == "decode" and r["model"] == name}
        assert decode == {(b, s, t) for b in BATCH for s in CONTEXT for t in NEW_TOKENS}
        prefill = {r["P"] for r in rows if r["kind"] == "prefill" and r["model"] == name}
        assert prefill == set(PROMPT)
    for r in rows:
        if "ms" in r and "min" in r:
            assert 0 < r["min"] <= r["ms"] <= r.get("max", math.inf)
    sweep = [r for r in rows if r["kind"] == "gemm_sweep"]
    assert [(r["M"], r["K"], r["N"]) for r in sweep] == [(1, 64, 128), (16, 64, 128)]
    for r in sweep:  # bf16: 2 bytes per element
        assert r["TFLOPs"] == pytest.approx(2 * r["M"] * r["K"] * r["N"] / (r["ms"] * 1e-3) / 1e12)
        assert r["TBps"] == pytest.approx((r["K"] * r["N"] + r["M"] * (r["K"] + r["N"])) * 2 / (r["ms"] * 1e-3) / 1e12)


def test_steps_file_reads_and_fits(steps_file):
    from sim.config.parse import load_hardware
    from sim.spec.engine import EngineProfile
    from sim.tools.calibration.engine_fit import fit_engine, read_measurements

    raw = _rows(steps_file)
    measured = read_measurements(steps_file)
    steps = sum(1 for r in raw if r["kind"] in ("decode", "prefill") and "ms" in r)
    assert sum(1 for m in measured if m.kind in ("decode", "prefill")) == steps > 0
    # gemm_sweep rows (and, in readers that use them, gemm_peak rows) come through as matmuls
    sweeps = sum(1 for r in raw if r["kind"] == "gemm_sweep")
    assert sweeps <= sum(1 for m in measured if m.mnk is not None) <= sweeps + 1
    by_name = {m.model.name: m.model for m in measured if m.model is not None}
    model_rows = {r["model"]: r for r in raw if r["kind"] == "model"}
    for name, spec in by_name.items():
        # the reader rebuilds the same parameter count and detects tied embeddings
        assert spec.params == model_rows[name]["params"]
        assert spec.tie_word_embeddings == model_rows[name]["tied"]
        assert spec.num_hidden_layers == model_rows[name]["L"]
    assert by_name["toytied-L2"].tie_word_embeddings and not by_name["tiny"].tie_word_embeddings
    # mixed and batched-prefill steps come through as step rows of their families
    steps_rows = [m for m in measured if m.kind == "step"]
    assert sorted(m.family for m in steps_rows) == ["mixed", "mixed", "prefill", "prefill"]
    assert all("(6 prompt tokens, 2 decodes)" in m.label for m in steps_rows if m.family == "mixed")
    batches = {m.label for m in measured if m.kind == "decode"}
    assert len(batches) == 2 * len(BATCH) * len(CONTEXT) * len(NEW_TOKENS)
    result = fit_engine(measured, load_hardware("h100"), EngineProfile(name="cpu_kit_test"))
    assert len(result.rows) == len(measured)
    assert all(np.isfinite(r["predicted_s"]) and r["predicted_s"] > 0 for r in result.rows)


def test_calibrate_command_accepts_the_file(steps_file, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sim.calibrate", f"data={steps_file}", f"out={tmp_path}",
                           "name=kit_cpu"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (tmp_path / "kit_cpu_cudagraph.yaml").is_file() and (tmp_path / "kit_cpu_eager.yaml").is_file()


def _logits_model(mod, seed=0, **shape):
    base = dict(name="t", h=32, L=2, nh=4, nkv=2, hd=8, ffn=64, vocab=64, tie=0)
    base.update(shape)
    model = mod.Decoder(base, torch.device("cpu"), torch.float32, seed)
    model.head = lambda x: torch.nn.functional.linear(model.rmsnorm(x, model.norm), model.lm_head)
    return model


def test_decoder_decode_matches_prefill_and_masks_future_tokens(steps_mod):
    model = _logits_model(steps_mod)
    with torch.no_grad():
        # S=0: decoding T tokens into an empty cache is a prefill of those T tokens
        dec, keep = model.decode_step(1, 0, 5)
        pre, pkeep = model.prefill_step(1, 5)
        pkeep[0].copy_(keep[1])
        assert torch.allclose(dec()[:, -1], pre()[:, -1], atol=1e-4)
        # S>0, T>1: token i sees the cache and new tokens 0..i, never later ones
        for kind in ("causal_lower_right", "bool"):
            model.mask_kind = kind
            step, keep = model.decode_step(2, 4, 3)
            caches, tokens = keep[0], keep[1]
            for kc, vc in caches:
                kc.normal_()
                vc.normal_()
            first = step().clone()
            tokens[:, 2] = (tokens[:, 2] + 1) % 64
            second = step()
            assert torch.allclose(first[:, :2], second[:, :2], atol=1e-5)
            assert not torch.allclose(first[:, 2], second[:, 2], atol=1e-5)
            # ... and token 0 does see the last cached position (lower-right alignment)
            for kc, vc in caches:
                vc[:, :, 3].normal_()
            third = step()
            assert not torch.allclose(second[:, 0], third[:, 0], atol=1e-5)
        # both mask implementations give the same result
        outs = []
        for kind in ("causal_lower_right", "bool"):
            model.mask_kind = kind
            step, keep = model.decode_step(2, 4, 3)
            torch.manual_seed(1)
            keep[1].copy_(torch.randint(0, 64, keep[1].shape))
            for kc, vc in keep[0]:
                kc.copy_(torch.randn(kc.shape))
                vc.copy_(torch.randn(vc.shape))
            outs.append(step())
        assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_param_count_matches_simulator(steps_mod):
    from sim.spec.model import ModelSpec

    for name, shape in steps_mod.PRESETS.items():
        m = dict(shape, name=name)
        spec = ModelSpec(name=name, hidden_size=m["h"], num_hidden_layers=m["L"], num_attention_heads=m["nh"],
                         num_key_value_heads=m["nkv"], head_dim=m["hd"], intermediate_size=m["ffn"],
                         vocab_size=m["vocab"], tie_word_embeddings=bool(m["tie"]))
        assert steps_mod.param_count(m) == spec.params, name
    built = _logits_model(steps_mod, tie=1)
    tensors = {id(t): t for p in built.layers for t in p.values()}
    tensors.update({id(t): t for t in (built.embed, built.lm_head, built.norm)})
    assert sum(t.numel() for t in tensors.values()) == steps_mod.param_count(built.s)


@pytest.mark.parametrize("argv, needle", [
    (["--shape", "h=abc,L=2,nh=2,nkv=1,ffn=8,vocab=16"], "field 'h' must be an integer, got 'abc'"),
    (["--shape", "h=8,L=2,nh=2,nkv=1,vocab=16"], "field 'ffn' is missing"),
    (["--shape", "h=8,L=2,nh=2,nkv=1,ffn=8,vocab=16,heads=3"], "unknown field 'heads'"),
    (["--shape", "h=8,L=2,nh=3,nkv=2,hd=4,ffn=8,vocab=16"], "nh=3 is not a multiple of nkv=2"),
    (["--model", "gpt5"], "unknown preset 'gpt5'"),
    (["--model", "tiny", "--batch", "1,x"], "--batch: 'x' is not an integer"),
    (["--model", "tiny", "--modes", "fast"], "unknown mode 'fast'"),
    (["--model", "tiny", "--layers", "0"], "--layers: 0 must be >= 1"),
])
def test_steps_bad_arguments_are_one_line_errors(steps_mod, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        steps_mod.parse_args(["--device", "cpu", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


# ---------------------------------------------------------------------------------------
# collectives
# ---------------------------------------------------------------------------------------
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\w+)\s+(\w+)\s+(-?\d+)" + r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)" * 2 + r"\s*$")
RANK = re.compile(r"^#  Rank +(\d+) Group +0 Pid +(\d+) on +(\S+) device +(\d+) \[[^\]]+\] (.+)$")
HEADER = re.compile(r"^# nThread 1 nGpus 1 minBytes (\d+) maxBytes (\d+) step: 2\(factor\) "
                    r"warmup iters: 1 iters: 3 agg iters: 1 validation: 1 graph: 0$")


@pytest.fixture(scope="module")
def collective_table(tmp_path_factory):
    """``collective_table(op)``: the table file of one 2-rank gloo run per op (run once)."""
    cache: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("nccl")

    def get(op: str) -> Path:
        if op not in cache:
            cache[op] = _run_collective(op, folder)
        return cache[op]
    return get


def _run_collective(op: str, folder: Path, nproc: int = 2) -> Path:
    out = folder / f"gloo_{op}.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(COLLECTIVES), "--device", "cpu", "--op", op, "--min-bytes", "8", "--max-bytes", "64K",
           "--iters", "3", "--warmup", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("op, bus_factor", [("all_reduce", 2 * (2 - 1) / 2), ("all_gather", (2 - 1) / 2)])
def test_collectives_table_has_nccl_tests_format(collective_table, op, bus_factor):
    path = collective_table(op)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# source: measured with kit/measure_collectives.py on ")
    assert "gloo" in lines[0] and torch.__version__ in lines[0]
    headers = [m for m in map(HEADER.match, lines) if m]
    assert len(headers) == 1 and headers[0].groups() == ("8", str(64 * 1024))
    ranks = [m for m in map(RANK.match, lines) if m]
    assert [int(m.group(1)) for m in ranks] == [0, 1]
    assert len({m.group(2) for m in ranks}) == 2  # one process per rank
    assert any(line.split() == ["#", "size", "count", "type", "redop", "root", "time", "algbw", "busbw",
                                "#wrong", "time", "algbw", "busbw", "#wrong"] for line in lines)
    data = [line for line in lines if not line.startswith("#")]
    assert data, "no data rows"
    sizes = []
    for line in data:
        m = ROW.match(line)
        assert m, f"row does not have 13 columns of the right types: {line!r}"
        assert len(line.split()) == 13
        size, count, dtype, redop, root = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), int(m.group(5))
        assert dtype == "float" and root == -1
        assert redop == ("sum" if op == "all_reduce" else "none")
        assert size == count * 4 * (1 if op == "all_reduce" else 2)
        for t, alg, bus, wrong in (m.group(6, 7, 8, 9), m.group(10, 11, 12, 13)):
            t, alg, bus = float(t), float(alg), float(bus)
            assert t > 0 and wrong == "0"
            assert alg == pytest.approx(size / t / 1e3, abs=0.006, rel=2e-3)
            assert bus == pytest.approx(alg * bus_factor, abs=0.006)
        sizes.append(size)
    # 8 B .. 64 KiB doubling; all_gather's size is the total of 2 ranks, so 8 B (one float
    # per rank) is the smallest non-empty row there too
    assert sizes == [8 * 2 ** i for i in range(14)]
    assert "# Out of bounds values : 0 OK" in lines


def test_collectives_table_reads_with_sim_nccl_log(collective_table):
    from sim.tools.calibration.nccl_log import parse_nccl_log

    path = collective_table("all_reduce")
    log = parse_nccl_log(path)
    rows = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert log.collective == "allreduce"
    assert log.ranks == 2 and log.nodes == 1 and log.gpus_per_process == 1
    assert list(log.bytes) == [int(r.split()[0]) for r in rows]
    assert np.allclose(log.in_place_us, [float(r.split()[9]) for r in rows])
    assert log.source is not None and "measure_collectives.py" in log.source


def test_collectives_table_fits_with_calibrate_command(collective_table, tmp_path):
    path = collective_table("all_reduce")
    proc = subprocess.run([sys.executable, "-m", "sim.calibrate", f"data={path}", "format=nccl-tests",
                           "hardware=h100", f"out={tmp_path / 'topo'}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert list((tmp_path / "topo").glob("*.yaml"))


def test_collectives_bad_size_is_a_one_line_error():
    proc = subprocess.run([sys.executable, str(COLLECTIVES), "--device", "cpu", "--max-bytes", "12Q"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--max-bytes: '12Q' is not a size" in proc.stderr


def test_a_ragged_step_computes_what_its_parts_compute_alone(steps_mod):
    """A prompt chunk mixed with decodes (one matmul per weight over all tokens, attention per
    part) gives each part the logits it gets alone; so does a batch of unequal prompts."""
    model = _logits_model(steps_mod)
    with torch.no_grad():
        step, keep = model.ragged_step([(1, 5, 0, True), (2, 1, 4, True)])
        tokens = keep[0]
        pre, pkeep = model.prefill_step(1, 5)
        pkeep[0].copy_(tokens[:5].view(1, 5))
        dec, dkeep = model.decode_step(2, 4, 1)
        dkeep[1].copy_(tokens[5:].view(2, 1))
        out = step()
        assert out.shape[0] == 3
        assert torch.allclose(out[0], pre()[0, -1], atol=1e-4)
        assert torch.allclose(out[1:], dec()[:, 0], atol=1e-4)
        step, keep = model.ragged_step([(1, 3, 0, True), (1, 7, 0, True)])
        tokens = keep[0]
        ends = []
        for start, n in ((0, 3), (3, 7)):
            pre, pkeep = model.prefill_step(1, n)
            pkeep[0].copy_(tokens[start:start + n].view(1, n))
            ends.append(pre()[0, -1])
        assert torch.allclose(step(), torch.stack(ends), atol=1e-4)


def test_bad_mixed_and_ragged_flags_are_one_line(tmp_path):
    for flag, value, needle in (("--mixed", "5:2", "is not CHUNK:DECODES:CONTEXT"),
                                ("--mixed", "0:2:8", "needs CHUNK >= 1"),
                                ("--ragged-prefill", "4+x", "is not P+P+...")):
        proc = subprocess.run([sys.executable, str(STEPS), "--device", "cpu", "--model", "tiny", flag, value, "--out",
                               str(tmp_path / "x.jsonl")], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr
