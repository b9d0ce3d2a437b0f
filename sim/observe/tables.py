"""Result tables assembled from run state (schemas in :mod:`sim.observe.schemas`)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from sim.observe import schemas
from sim.policy.requests import RequestStore


def requests_table(req: RequestStore) -> pa.Table:
    """``requests.parquet``: one row per request, latencies derived from its timestamps."""
    n = len(req)
    arrival, prompt, output = req.arrival_s, req.prompt_tokens, req.output_tokens
    col = RequestStore.column
    first = col(req.first_token_s, np.float64)
    finish = col(req.finish_s, np.float64)
    passes = col(req.decode_passes, np.int32)
    out = np.where(output > 1, output - 1, np.nan)
    return pa.Table.from_pydict({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_s": arrival,
        "prompt_tokens": prompt,
        "output_tokens": output,
        "replica": col(req.replica, np.int32),
        "status": np.where(col(req.rejected, bool), "rejected",
                           np.where(np.isnan(finish), "unfinished", "completed")),
        "first_token_s": first,
        "finish_s": finish,
        "ttft_s": first - arrival,
        "tpot_s": (finish - first) / out,
        "e2e_s": finish - arrival,
        "preemptions": col(req.preemptions, np.int32),
        "decode_passes": passes,
        "tokens_per_pass": np.where(passes > 0, (output - 1) / np.maximum(passes, 1), np.nan),
    }, schema=schemas.REQUESTS)
