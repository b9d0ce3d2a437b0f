"""Headline experiment: what speculative decoding buys per request, and where the gain goes.

Design (physics.md §3). Llama-3-70B in bf16 on H100s, two tensor-parallel deployments
(``DEPLOYMENTS``): ``TP8`` on one HGX node (NVSwitch) and ``TP16`` on two nodes whose
all-reduces cross InfiniBand (``topology=multi_node_ib parallel.tp=16``), and two ways of
drafting (``METHODS``):

* ``draft`` -- a separate Llama-3-8B draft model (``speculative=draft
  speculative.draft_model=llama3_8b``) on the target's own GPUs, sharded like the target
  (TP8, or TP16 across both nodes): every proposed token is a full 32-layer forward pass that
  pays its own 64 all-reduces and kernel launches;
* ``self`` -- draft heads on the target (``speculative=self``, EAGLE/MTP-like): one decoder
  layer of the target's shape plus the LM head, so a proposed token costs two all-reduces.

The metric is the **speedup of per-request decode speed**: ``speed = 1 / mean TPOT`` over the
run's requests, speculative run over the matching ``speculative=none`` run (same deployment,
batch and network; :func:`speedups`).

The grid is four one-factor-at-a-time sweeps around ``CENTER`` (acceptance ``a = 0.8``,
``gamma = 4``, batch 1, datasheet latency), for every deployment x method:

* ``acceptance`` -- the per-token acceptance probability ``a``;
* ``num_tokens`` -- the draft length ``gamma`` (1..8) and ``auto`` (per step, the gamma that
  maximises expected tokens per second for the current batch);
* ``batch`` -- the decode batch size, at ``gamma = 4`` and (full grid) at ``auto``;
* ``latency_scale`` -- ``network.latency_scale``, which multiplies every per-message latency
  (link hops and the collectives' software latency).

Points shared by several sweeps (the centre) run once; the ``none`` baselines run once per
(deployment, batch, latency_scale). Each point is one discrete-event simulation
(:func:`sim.experiments.run_points`) starting from ``conf/experiment/speculative.yaml``
(``+experiment=speculative``) with the workload replaced by a trace (``workload.path``) of
``waves`` waves of ``batch`` identical requests (512-token prompt, 256 output tokens); a wave
arrives all at once (so it prefills in one step and then decodes at exactly ``batch``
sequences) ``WAVE_GAP_S`` seconds after the previous one, long after it has finished. Waves
average out the randomness of acceptance: each point decodes at least
``MIN_DECODE_TOKENS`` tokens (one wave of a 1-request batch gives a +-5% speedup).

:func:`analytic` gives the same speedups in closed form (:class:`sim.cost.analytic.AnalyticModel`,
steady decoding at the mean decode context ``PROMPT + OUTPUT / 2``) on denser axes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.experiments import DEPLOYMENT_LABELS, DEPLOYMENTS, run_points, with_columns  # noqa: F401  (labels: used by the notebook)

NAME = "speculative"
BASE = [f"+experiment={NAME}"]

METHODS: dict[str, dict[str, Any]] = {
    "draft": {"speculative": "draft", "speculative.draft_model": "llama3_8b"},
    "self": {"speculative": "self"},
}
METHOD_LABELS = {"draft": "8B draft model (same GPUs)", "self": "draft heads (EAGLE/MTP-like)"}
BASELINE = {"speculative": "none"}

#: the point every sweep passes through
CENTER: dict[str, Any] = {"acceptance": 0.8, "num_tokens": "4", "batch": 1, "latency_scale": 1.0}
#: the swept factors, in plotting order
FACTORS = ("acceptance", "num_tokens", "batch", "latency_scale")
SWEEPS: dict[str, tuple] = {
    "acceptance": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    "num_tokens": ("1", "2", "3", "4", "5", "6", "7", "8", "auto"),
    "batch": (1, 2, 4, 8, 16, 32, 64, 128),
    "latency_scale": (0.5, 1.0, 2.0, 4.0),
}
QUICK_SWEEPS: dict[str, tuple] = {
    "acceptance": (0.6, 0.8, 0.95),
    "num_tokens": ("2", "4", "auto"),
    "batch": (1, 64),
    "latency_scale": (0.5, 1.0, 2.0),
}
#: the batch sweep is run at each of these draft lengths (quick: the first only)
BATCH_NUM_TOKENS = ("4", "auto")

PROMPT, OUTPUT = 512, 256
MIN_DECODE_TOKENS, QUICK_MIN_DECODE_TOKENS = 8192, 4096
WAVE_GAP_S = 100.0

#: identification columns added to the sweep table, one value per point (None where not applicable)
ID_COLUMNS = ("method", "deployment", "tp", "acceptance", "num_tokens", "batch", "latency_scale", "waves",
              "requests")
#: per-run measurements added from the run's requests.parquet / steps.parquet
PARTS = ("compute", "memory", "network", "fixed")
RUN_COLUMNS = ("speed_tok_s", "tokens_per_pass", "mean_gamma", "draft_share", *(f"{p}_per_token_s" for p in PARTS))


# ------------------------------------------------------------------ grid

def waves_for(batch: int, min_tokens: int = MIN_DECODE_TOKENS, output: int = OUTPUT) -> int:
    """Waves of ``batch`` requests needed to decode at least ``min_tokens`` tokens in all."""
    return max(1, math.ceil(min_tokens / (batch * output)))


def trace_name(batch: int, waves: int) -> str:
    """File name of the trace for ``waves`` waves of ``batch`` requests."""
    return f"batch{batch}_waves{waves}.csv"


def trace_text(batch: int, waves: int, prompt: int = PROMPT, output: int = OUTPUT,
               gap_s: float = WAVE_GAP_S) -> str:
    """CSV trace (``arrival_s,prompt_tokens,output_tokens``): wave ``w`` = ``batch`` identical
    requests arriving together at ``w x gap_s`` seconds."""
    rows = "".join(f"{w * gap_s!r},{prompt},{output}\n" * batch for w in range(waves))
    return "arrival_s,prompt_tokens,output_tokens\n" + rows


def spec_settings(quick: bool = False) -> list[dict[str, Any]]:
    """The speculative settings of one deployment x method: the union of the one-factor sweeps
    around :data:`CENTER` (``acceptance``, ``num_tokens``, ``batch``, ``latency_scale``), deduplicated,
    in sweep order."""
    sweeps = QUICK_SWEEPS if quick else SWEEPS
    seen: dict[tuple, dict[str, Any]] = {}
    for factor in FACTORS:
        bases = [dict(CENTER, num_tokens=g) for g in (BATCH_NUM_TOKENS[:1] if quick else BATCH_NUM_TOKENS)] \
            if factor == "batch" else [dict(CENTER)]
        for base in bases:
            for v in sweeps[factor]:
                s = dict(base, **{factor: v})
                seen.setdefault(tuple(s[k] for k in FACTORS), s)
    return list(seen.values())


def points(quick: bool = False, trace_dir: str | Path = "traces") -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The grid: ``(labels, overrides)`` per simulation.

    Per deployment: the ``none`` baselines (one per batch x latency_scale that some speculative
    point uses), then each method's :func:`spec_settings`. ``labels`` holds :data:`ID_COLUMNS`
    (``acceptance`` and ``num_tokens`` are None for ``none``); ``overrides`` the Hydra overrides
    on top of :data:`BASE`, with ``workload.path`` pointing at ``trace_dir /`` :func:`trace_name`
    (write the traces with :func:`write_traces`) and ``workload.max_requests`` = all of its requests
    (the experiment config's 3 would truncate it).
    """
    min_tokens = QUICK_MIN_DECODE_TOKENS if quick else MIN_DECODE_TOKENS
    settings = spec_settings(quick)
    trace_dir = Path(trace_dir)
    out = []

    def common(dep: str, batch: int, latency: float) -> tuple[dict[str, Any], dict[str, Any]]:
        waves = waves_for(batch, min_tokens)
        over = {**DEPLOYMENTS[dep], "scheduler.max_batch_size": batch,
                "scheduler.max_tokens_per_step": max(2048, batch * PROMPT),
                "network.latency_scale": float(latency), "workload.path": str(trace_dir / trace_name(batch, waves)),
                "workload.max_requests": waves * batch}
        labels = {"deployment": dep, "tp": DEPLOYMENTS[dep]["parallel.tp"], "batch": batch,
                  "latency_scale": float(latency), "waves": waves, "requests": waves * batch}
        return labels, over

    for dep in DEPLOYMENTS:
        bases = list(dict.fromkeys((s["batch"], s["latency_scale"]) for s in settings))
        for batch, latency in bases:
            labels, over = common(dep, batch, latency)
            out.append(({"method": "none", "acceptance": None, "num_tokens": None, **labels}, {**BASELINE, **over}))
        for method, m_over in METHODS.items():
            for s in settings:
                labels, over = common(dep, s["batch"], s["latency_scale"])
                over = {**m_over, "speculative.acceptance": s["acceptance"], "speculative.num_tokens": s["num_tokens"],
                        **over}
                out.append(({"method": method, "acceptance": s["acceptance"], "num_tokens": s["num_tokens"], **labels},
                            over))
    return out


def write_traces(grid: Iterable[tuple[dict[str, Any], dict[str, Any]]]) -> list[Path]:
    """Write every trace the grid's ``workload.path`` names (parents created); return the paths."""
    written = {}
    for labels, over in grid:
        path = Path(over["workload.path"])
        if path not in written:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(trace_text(labels["batch"], labels["waves"]))
            written[path] = True
    return list(written)


# ------------------------------------------------------------------ per-run measurements

def run_measures(requests: pa.Table, steps: pa.Table) -> dict[str, float]:
    """A run's :data:`RUN_COLUMNS` from its ``requests.parquet`` and ``steps.parquet``.

    ``speed_tok_s`` = 1 / mean TPOT of the completed requests (per-request decode speed);
    ``tokens_per_pass`` = decode tokens / decode passes (1 without speculation);
    ``mean_gamma`` = proposed draft tokens / decode passes (the draft length actually used,
    averaged over passes; ``auto`` may pick 0); ``draft_share`` = drafting time / step time
    over the decode-only steps (``prefill_tokens == 0``); ``<part>_per_token_s`` = the decode-only
    steps' arithmetic / HBM / collective / launch-and-overhead time (drafting included) per token
    they generated (``batch_size + spec_accepted_tokens`` per step).
    """
    req = requests.to_pydict()
    done = [i for i, s in enumerate(req["status"]) if s == "completed" and req["tpot_s"][i] == req["tpot_s"][i]]
    tpot = float(np.mean([req["tpot_s"][i] for i in done])) if done else float("nan")
    passes = float(sum(req["decode_passes"][i] for i in done))
    tokens = float(sum(req["output_tokens"][i] - 1 for i in done))
    st = steps.to_pydict()
    decode = [i for i, p in enumerate(st["prefill_tokens"]) if p == 0]
    step_s = sum(st["duration_s"][i] for i in decode)
    generated = float(sum(st["batch_size"][i] + st["spec_accepted_tokens"][i] for i in decode))
    per_token = {f"{p}_per_token_s": (sum(st[f"{p}_s"][i] for i in decode) / generated if generated else float("nan"))
                 for p in PARTS}
    return {
        "speed_tok_s": 1.0 / tpot if tpot > 0 else float("nan"),
        "tokens_per_pass": tokens / passes if passes else float("nan"),
        "mean_gamma": float(sum(st["spec_proposed_tokens"])) / passes if passes else float("nan"),
        "draft_share": sum(st["draft_s"][i] for i in decode) / step_s if step_s > 0 else float("nan"),
        **per_token,
    }


def label_table(sweep: pa.Table, labels: list[dict[str, Any]], jobs_dir: str | Path | None = None) -> pa.Table:
    """The sweep table (rows in job order ``0..n-1``) with :data:`ID_COLUMNS` appended, and, given
    ``jobs_dir`` (the directory holding the job directories), :data:`RUN_COLUMNS` (NaN for
    failed jobs)."""
    jobs = [int(j) for j in sweep.column("job").to_pylist()]
    rows = [labels[j] for j in jobs]
    types = {"method": pa.string(), "deployment": pa.string(), "tp": pa.int64(), "acceptance": pa.float64(),
             "num_tokens": pa.string(), "batch": pa.int64(), "latency_scale": pa.float64(), "waves": pa.int64(),
             "requests": pa.int64()}
    extra = {c: pa.array([r[c] for r in rows], types[c]) for c in ID_COLUMNS}
    if jobs_dir is not None:
        errors = sweep.column("error").to_pylist()
        measures = []
        for j, err in zip(jobs, errors):
            job = Path(jobs_dir) / str(j)
            if err is None and (job / "requests.parquet").is_file():
                measures.append(run_measures(pq.read_table(job / "requests.parquet"),
                                             pq.read_table(job / "steps.parquet")))
            else:
                measures.append({c: float("nan") for c in RUN_COLUMNS})
        extra.update({c: pa.array([m[c] for m in measures], pa.float64()) for c in RUN_COLUMNS})
    return with_columns(sweep, extra)


# ------------------------------------------------------------------ analysis

def speedups(table: pa.Table) -> pa.Table:
    """Per speculative run: its per-request speed over the matching ``none`` run's.

    Matches on (deployment, batch, latency_scale). Speeds come from ``speed_tok_s`` if present,
    else ``1 / tpot_mean_s``. Columns: the identification columns (``method``, ``deployment``,
    ``tp``, ``acceptance``, ``num_tokens``, ``batch``, ``latency_scale``), ``speed_tok_s``,
    ``base_speed_tok_s``, ``speedup``, and ``tokens_per_pass``, ``mean_gamma``, ``draft_share``
    where the table has them (else None). Runs without a speed or without a matching baseline
    are left out; rows keep the table's order.
    """
    cols = table.column_names
    rows = table.to_pylist()

    def speed(r: dict[str, Any]) -> float | None:
        v = r.get("speed_tok_s") if "speed_tok_s" in cols else None
        if v is None or v != v:
            t = r.get("tpot_mean_s")
            v = 1.0 / t if t else None
        return v

    base: dict[tuple, float] = {}
    for r in rows:
        v = speed(r) if r["method"] == "none" else None
        if v:
            base.setdefault((r["deployment"], r["batch"], r["latency_scale"]), v)
    keys = ("method", "deployment", "tp", "acceptance", "num_tokens", "batch", "latency_scale")
    extras = ("tokens_per_pass", "mean_gamma", "draft_share")
    out: dict[str, list] = {k: [] for k in (*keys, "speed_tok_s", "base_speed_tok_s", "speedup", *extras)}
    for r in rows:
        if r["method"] == "none":
            continue
        s, b = speed(r), base.get((r["deployment"], r["batch"], r["latency_scale"]))
        if not s or not b:
            continue
        for k in keys:
            out[k].append(r.get(k))
        out["speed_tok_s"].append(s)
        out["base_speed_tok_s"].append(b)
        out["speedup"].append(s / b)
        for k in extras:
            out[k].append(r.get(k) if k in cols else None)
    types = {"method": pa.string(), "deployment": pa.string(), "tp": pa.int64(), "num_tokens": pa.string(),
             "batch": pa.int64()}
    return pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in out.items()})


def _gamma_key(g: Any) -> float:
    return math.inf if g == "auto" else float(g)


def series(sp: pa.Table, method: str, deployment: str, factor: str, **fixed: Any) -> tuple[list, list]:
    """``(x, speedup)`` of one sweep line of a :func:`speedups` table, sorted by ``x``.

    Keeps the rows of ``method`` x ``deployment`` whose factors other than ``factor`` equal
    :data:`CENTER` (updated by ``fixed``, e.g. ``num_tokens="auto"``). For ``num_tokens`` the
    x values are strings, ``auto`` last.
    """
    if factor not in FACTORS:
        raise ValueError(f"factor={factor!r} is not one of {list(FACTORS)}")
    center = dict(CENTER, **fixed)
    pts = []
    for r in sp.to_pylist():
        if r["method"] != method or r["deployment"] != deployment:
            continue
        if all(r[k] == center[k] for k in FACTORS if k != factor):
            pts.append((r[factor], r["speedup"]))
    key = _gamma_key if factor == "num_tokens" else float
    pts.sort(key=lambda p: key(p[0]))
    return [p[0] for p in pts], [p[1] for p in pts]


def lookup(sp: pa.Table, method: str, deployment: str, column: str = "speedup", **point: Any) -> float:
    """One value of a :func:`speedups` table at ``CENTER`` updated by ``point``."""
    center = dict(CENTER, **point)
    hits = [r[column] for r in sp.to_pylist() if r["method"] == method and r["deployment"] == deployment
            and all(r[k] == center[k] for k in FACTORS)]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} rows for {method} {deployment} {center}")
    return hits[0]


def values(table: pa.Table, column: str) -> list:
    """Distinct values of a column in first-seen order."""
    return list(dict.fromkeys(table.column(column).to_pylist()))


# ------------------------------------------------------------------ analytic

def _best_rate(pass_s: list[np.ndarray], a: float, num_tokens: str,
               b_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Speed (tokens/s), gamma and expected tokens per pass at batch indices ``b_idx`` for a fixed
    ``num_tokens`` or the best gamma in ``0..len(pass_s) - 1`` (``auto``); ``pass_s[g]`` holds the
    pass time at ``gamma = g`` per batch size."""
    from sim.policy.speculative import best_gamma

    cands = range(len(pass_s)) if num_tokens == "auto" else [int(num_tokens)]
    gam, tok, rate = best_gamma({g: pass_s[g][b_idx] for g in cands}, a)
    return rate, gam, tok


def analytic(quick: bool = False, context_len: float = PROMPT + OUTPUT / 2) -> pa.Table:
    """Closed-form speedups (:meth:`sim.cost.analytic.AnalyticModel.decode`) along the same four sweeps.

    One model per deployment x latency_scale x (none, draft, self): the pass time of ``gamma``
    drafts plus verification does not depend on ``a``, so the speed at any acceptance is
    ``expected_tokens(a, gamma) / pass_s(gamma)`` (``auto``: the best gamma in
    ``0..max_num_tokens``). Axes are denser than the simulated ones (acceptance every 0.025,
    gamma 1..8 and auto, 24 roughly geometric batch sizes up to the largest simulated one, the
    simulated latency scales plus 9 geometric ones between them; quick: the simulated latency
    scales only). Columns: ``method``, ``deployment``,
    ``tp``, ``factor`` (the swept one), the four factors (:data:`FACTORS`), ``gamma`` (the one
    used), ``tokens_per_pass``, ``speed_tok_s``, ``base_speed_tok_s``, ``speedup``.
    """
    from sim.build import analytic_model
    from sim.config.compose import compose_config
    from sim.config.parse import parse_config
    from sim.cost.analytic import Split

    sweeps = QUICK_SWEEPS if quick else SWEEPS
    acc = np.round(np.arange(sweeps["acceptance"][0], sweeps["acceptance"][-1] + 1e-9, 0.025), 4)
    gammas = [g for g in SWEEPS["num_tokens"]]
    batches = np.unique(np.round(np.geomspace(1, max(sweeps["batch"]), 24)))
    lat_dense = np.asarray(sweeps["latency_scale"], dtype=np.float64)
    if not quick:  # one model per latency: 0.13 s each
        lat_dense = np.unique(np.concatenate([lat_dense, np.geomspace(lat_dense.min(), lat_dense.max(), 9)]))
    all_b = np.unique(np.concatenate([batches, [CENTER["batch"]]]))
    out: dict[str, list] = {k: [] for k in ("method", "deployment", "tp", "factor", *FACTORS, "gamma",
                                            "tokens_per_pass", "speed_tok_s", "base_speed_tok_s", "speedup")}

    def model(dep: str, over: dict[str, Any], latency: float) -> tuple[Any, Any]:
        ov = {**DEPLOYMENTS[dep], **over, "network.latency_scale": float(latency)}
        cfg = parse_config(compose_config(BASE + [f"{k}={v}" for k, v in ov.items()]))
        return analytic_model(cfg), Split(cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.tp_cols)

    def add(method, dep, factor, point, gamma, tokens, speed, base):
        out["method"].append(method)
        out["deployment"].append(dep)
        out["tp"].append(DEPLOYMENTS[dep]["parallel.tp"])
        out["factor"].append(factor)
        for k in FACTORS:
            out[k].append(point[k])
        out["gamma"].append(float(gamma))
        out["tokens_per_pass"].append(float(tokens))
        out["speed_tok_s"].append(float(speed))
        out["base_speed_tok_s"].append(float(base))
        out["speedup"].append(float(speed / base))

    for dep in DEPLOYMENTS:
        for latency in lat_dense:
            bm, split = model(dep, BASELINE, latency)
            base = bm.decode(split, all_b, context_len=context_len)["speed_tok_s"]
            base_at = dict(zip(all_b.tolist(), base.tolist()))
            for method, m_over in METHODS.items():
                sm, split = model(dep, m_over, latency)
                max_g = sm.cfg.speculative.max_num_tokens
                pass_s = [sm.decode(split, all_b, context_len=context_len, gamma=g)["pass_s"] for g in range(max_g + 1)]

                def best(a: float, num_tokens: str, b_idx: np.ndarray, pass_s=pass_s):
                    return _best_rate(pass_s, a, num_tokens, b_idx)

                c_idx = np.searchsorted(all_b, [CENTER["batch"]])
                b1 = base_at[float(CENTER["batch"])]
                if latency == CENTER["latency_scale"]:
                    for a in acc:
                        r, g, t = best(float(a), CENTER["num_tokens"], c_idx)
                        add(method, dep, "acceptance", dict(CENTER, acceptance=float(a)), g[0], t[0], r[0], b1)
                    for gname in gammas:
                        r, g, t = best(CENTER["acceptance"], gname, c_idx)
                        add(method, dep, "num_tokens", dict(CENTER, num_tokens=gname), g[0], t[0], r[0], b1)
                    b_idx = np.searchsorted(all_b, batches)
                    for gname in BATCH_NUM_TOKENS:
                        r, g, t = best(CENTER["acceptance"], gname, b_idx)
                        for i, b in enumerate(batches):
                            add(method, dep, "batch", dict(CENTER, num_tokens=gname, batch=int(b)), g[i], t[i], r[i],
                                base_at[float(b)])
                r, g, t = best(CENTER["acceptance"], CENTER["num_tokens"], c_idx)
                add(method, dep, "latency_scale", dict(CENTER, latency_scale=float(latency)), g[0], t[0], r[0], b1)
    types = {"method": pa.string(), "deployment": pa.string(), "tp": pa.int64(), "factor": pa.string(),
             "num_tokens": pa.string(), "batch": pa.int64()}
    return pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in out.items()})


def analytic_series(an: pa.Table, method: str, deployment: str, factor: str, **fixed: Any) -> tuple[list, list]:
    """``(x, speedup)`` of one closed-form line of an :func:`analytic` table, sorted by ``x``
    (``fixed`` selects e.g. ``num_tokens="auto"`` on the batch axis)."""
    center = dict(CENTER, **fixed)
    pts = [(r[factor], r["speedup"]) for r in an.to_pylist()
           if r["method"] == method and r["deployment"] == deployment and r["factor"] == factor
           and all(r[k] == center[k] for k in FACTORS if k != factor)]
    key = _gamma_key if factor == "num_tokens" else float
    pts.sort(key=lambda p: key(p[0]))
    return [p[0] for p in pts], [p[1] for p in pts]


# ------------------------------------------------------------------ the study

def run(root: str | Path, quick: bool = False) -> pa.Table:
    """Run the grid under ``root/jobs/<i>/`` (traces in ``root/traces/``) and return the tidy table.

    The table -- the sweep table of :func:`sim.tools.sweep.collect` plus :data:`ID_COLUMNS` and
    :data:`RUN_COLUMNS` -- is written to ``root/speculative.parquet``; :func:`speedups` of it
    to ``root/speculative_speedups.parquet`` and :func:`analytic` to
    ``root/speculative_analytic.parquet``. Errors (none expected) are kept in the ``error``
    column rather than raised.
    """
    root = Path(root)
    grid = points(quick, trace_dir=(root / "traces").resolve())
    write_traces(grid)
    sweep = run_points(BASE, [over for _, over in grid], root / "jobs")
    table = label_table(sweep, [labels for labels, _ in grid], root / "jobs")
    pq.write_table(table, root / f"{NAME}.parquet")
    pq.write_table(speedups(table), root / f"{NAME}_speedups.parquet")
    pq.write_table(analytic(quick), root / f"{NAME}_analytic.parquet")
    return table


__all__ = ["points", "spec_settings", "waves_for", "trace_text", "write_traces", "run_measures", "label_table",
           "speedups", "series", "lookup", "values", "analytic", "analytic_series", "run"]
