"""Real request traces shipped inside the package (see ``data/ATTRIBUTION.md``).

``BUNDLED_TRACES`` maps a short name to ``(file name under data/, reader format)``.  The
files are copied unchanged from their public sources; all normalisation (sorting,
seconds from the first request) happens in the readers.
"""

from __future__ import annotations

from pathlib import Path

from workloads.errors import WorkloadError
from workloads.request_table import RequestTable
from workloads.trace_readers import read_trace

__all__ = ["BUNDLED_TRACES", "bundled_trace_path", "load_bundled"]

DATA_DIR = Path(__file__).resolve().parent / "data"

BUNDLED_TRACES: dict[str, tuple[str, str]] = {
    "azure_code": ("azure_llm_2023_code.csv", "azure"),
    "mooncake_synthetic": ("mooncake_synthetic.jsonl", "mooncake"),
}


def bundled_trace_path(name: str) -> Path:
    """Path of the bundled trace called ``name`` (a key of ``BUNDLED_TRACES``)."""
    if name not in BUNDLED_TRACES:
        raise WorkloadError(f"bundled trace {name!r} is unknown; allowed: {sorted(BUNDLED_TRACES)}")
    return DATA_DIR / BUNDLED_TRACES[name][0]


def load_bundled(name: str) -> RequestTable:
    """Read the bundled trace called ``name`` into a :class:`RequestTable`."""
    path = bundled_trace_path(name)
    return read_trace(path, format=BUNDLED_TRACES[name][1])
