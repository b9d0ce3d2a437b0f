"""The progress line of a run (``output.progress``): requests done of the trace's, and the
simulated time against the trace's last arrival."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """On a terminal, one line rewritten every half second; otherwise (a log file, a pipe)
    one line at every tenth of the requests done. ``never`` turns it off; ``always`` is the
    same as ``auto``. The fraction is of requests done, so it reaches 100 % exactly when the
    run ends and never passes it."""

    def __init__(self, clock, end_s: float, mode: str, total: int, stream: TextIO | None = None) -> None:
        """``clock``: anything with a ``now`` in simulated seconds (the SimPy environment)."""
        self.stream = stream or sys.stderr
        self.enabled = mode in ("auto", "always") and total > 0
        self.terminal = self.stream.isatty()
        self.clock, self.end_s, self.total, self.done = clock, max(end_s, 1e-9), total, 0
        self.last = 0.0
        self.next_tenth = 1

    def _line(self) -> str:
        return (f"[sim] {self.done / self.total:4.0%} of {self.total:,} requests done, "
                f"{self.clock.now:,.1f} s simulated (last arrival at {self.end_s:,.1f} s)")

    def tick(self, force: bool = False) -> None:
        if not self.enabled:
            return
        if self.terminal:
            now = time.perf_counter()
            if force or now - self.last > 0.5:
                self.last = now
                self.stream.write("\r" + self._line())
                self.stream.flush()
        elif self.done * 10 >= self.next_tenth * self.total:
            while self.done * 10 >= self.next_tenth * self.total:
                self.next_tenth += 1
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.terminal:
            self.tick(force=True)
            self.stream.write("\n")
