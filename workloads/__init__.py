"""What arrives at the cluster: request traces and synthetic workloads.

Pure numpy + pyarrow + standard library; this package never imports the simulator.

* :class:`RequestTable` -- immutable arrival times (s) and prompt/output token counts.
* Trace readers -- :func:`read_trace` (auto-detecting), :func:`read_azure_csv`,
  :func:`read_mooncake_jsonl`, :func:`read_plain`.
* Bundled real traces -- :data:`BUNDLED_TRACES`, :func:`load_bundled`.
* Synthetic workloads -- :func:`synthetic_requests`, built from the arrival samplers
  (:func:`poisson_arrivals`, :func:`gamma_arrivals`, :func:`onoff_arrivals`) and
  :func:`sample_lengths`.
* Time-varying demand -- :class:`RateProfile` (:func:`read_rate_profile`), applied by an exact
  time change (:func:`apply_rate_profile`); :meth:`RequestTable.tiled` replays a trace back to back.
"""

from workloads.arrivals import gamma_arrivals, onoff_arrivals, poisson_arrivals
from workloads.bundled import BUNDLED_TRACES, bundled_trace_path, load_bundled
from workloads.errors import WorkloadError
from workloads.lengths import LENGTH_DISTRIBUTIONS, sample_lengths
from workloads.rate_profile import RateProfile, apply_rate_profile, read_rate_profile
from workloads.request_table import RequestTable
from workloads.synthetic import ARRIVAL_PROCESSES, synthetic_requests
from workloads.trace_readers import (
    TRACE_FORMATS,
    read_azure_csv,
    read_mooncake_jsonl,
    read_plain,
    read_trace,
)

__all__ = [
    "ARRIVAL_PROCESSES",
    "BUNDLED_TRACES",
    "LENGTH_DISTRIBUTIONS",
    "TRACE_FORMATS",
    "RateProfile",
    "RequestTable",
    "WorkloadError",
    "apply_rate_profile",
    "bundled_trace_path",
    "gamma_arrivals",
    "load_bundled",
    "onoff_arrivals",
    "poisson_arrivals",
    "read_azure_csv",
    "read_mooncake_jsonl",
    "read_plain",
    "read_rate_profile",
    "read_trace",
    "sample_lengths",
    "synthetic_requests",
]
