"""Column schemas of the Parquet outputs, defined once (units in the names)."""
from __future__ import annotations

import pyarrow as pa

REQUESTS = pa.schema([
    ("request_id", pa.int64()),
    ("arrival_s", pa.float64()),
    ("prompt_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
    ("replica", pa.int32()),
    ("status", pa.string()),            # completed | rejected | failed (faults) | unfinished (a run stopped early)
    ("scheduled_s", pa.float64()),      # start of the first step that computed any of its prompt
    ("first_token_s", pa.float64()),
    ("finish_s", pa.float64()),
    ("ttft_s", pa.float64()),           # first_token_s - arrival_s
    ("tpot_s", pa.float64()),           # (finish_s - first_token_s) / (output_tokens - 1); NaN if 1 token
    ("e2e_s", pa.float64()),            # finish_s - arrival_s
    ("preemptions", pa.int32()),
    ("decode_passes", pa.int32()),      # forward passes that produced this request's tokens after the first
    ("tokens_per_pass", pa.float64()),  # (output_tokens - 1) / decode_passes: > 1 with speculative decoding
    ("cached_tokens", pa.int64()),      # prompt tokens served from the prefix cache when first scheduled
    ("priority", pa.int32()),           # the trace's priority (lower first under scheduler.policy=priority)
    ("restarts", pa.int32()),           # faults that took its replica down while it was in flight (faults=mtbf)
])

STEPS = pa.schema([
    ("replica", pa.int32()),
    ("step", pa.int64()),
    ("start_s", pa.float64()),
    ("duration_s", pa.float64()),
    ("batch_size", pa.int32()),
    ("prefill_tokens", pa.int64()),
    ("decode_tokens", pa.int64()),
    ("compute_s", pa.float64()),
    ("memory_s", pa.float64()),
    ("network_s", pa.float64()),
    ("fixed_s", pa.float64()),
    ("pipeline_wait_s", pa.float64()),  # waiting for busy later stages (pp > 1); parts + wait = duration
    ("kv_blocks_used", pa.int64()),
    ("waiting", pa.int32()),
    ("preempted", pa.int32()),
    ("draft_s", pa.float64()),              # drafting time inside this step (speculative decoding)
    ("spec_proposed_tokens", pa.int64()),   # draft tokens verified in this step
    ("spec_accepted_tokens", pa.int64()),   # of which accepted
])

TRANSFERS = pa.schema([                 # disagg=pools: one row per request whose KV moved between pools
    ("request_id", pa.int64()),
    ("src", pa.int32()),                # prefill replica
    ("dst", pa.int32()),                # decode replica
    ("bytes", pa.float64()),            # prompt tokens x KV bytes per token
    ("messages", pa.int64()),           # messages sent (GPU pairs, x layers when layerwise)
    ("ready_s", pa.float64()),          # the prefill step that completed the prompt ended
    ("start_s", pa.float64()),          # the first message could leave (layerwise: that step began)
    ("end_s", pa.float64()),            # the last byte arrived: the request decodes from here
])
