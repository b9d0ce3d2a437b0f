"""Error type for everything the ``workloads`` package rejects.

Messages are a single line that names the offending field or file, the bad value, and
what would have been accepted, so that a failed experiment points straight at its
cause.  Problems inside a trace file carry the file name and the 1-based line number,
for example::

    azure_llm_2023_code.csv line 17: ContextTokens='abc' is not a non-negative integer
"""

from __future__ import annotations


class WorkloadError(ValueError):
    """A workload description, trace file or sampler parameter is invalid."""

    def __init__(self, message: str) -> None:
        # Keep the promise of one-line messages even when a value contains newlines.
        super().__init__(" ".join(str(message).splitlines()))
