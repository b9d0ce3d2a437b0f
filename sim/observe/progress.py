"""The progress line of a run: simulated time against the trace's end (``output.progress``)."""
from __future__ import annotations

import sys
import time


class Progress:
    """Written to stderr every half second on a terminal (``auto``), always, or never."""

    def __init__(self, clock, end_s: float, mode: str, total: int) -> None:
        """``clock``: anything with a ``now`` in simulated seconds (the SimPy environment)."""
        self.enabled = mode == "always" or (mode == "auto" and sys.stderr.isatty())
        self.clock, self.end_s, self.total, self.done = clock, max(end_s, 1e-9), total, 0
        self.last = 0.0

    def tick(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.enabled and (force or now - self.last > 0.5):
            self.last = now
            frac = min(1.0, self.clock.now / self.end_s)
            sys.stderr.write(f"\r[sim] {frac:6.1%} of trace ({self.clock.now:9.1f}/{self.end_s:.1f} s simulated), "
                             f"{self.done}/{self.total} requests done")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self.tick(force=True)
            sys.stderr.write("\n")
