"""Parse the text output of nccl-tests (``all_reduce_perf``, ``all_gather_perf``, ...).

A log is the ``#`` header (``nThread 1 nGpus 8 ...``, one ``#  Rank r Group g Pid p on HOST
device d [bus] NAME`` line per rank, column names) followed by one data row per message size::

    size  count  type  redop  root  | time algbw busbw #wrong | time algbw busbw #wrong
                                      (out-of-place, us)        (in-place, us)

Older nccl-tests versions print no ``root`` column, so rows are read from the right: the
last eight fields are the out-of-place and in-place (time, algbw, busbw, #wrong) groups.
``size`` is the buffer of one rank for all-reduce and the *total* gathered buffer for
all-gather (each rank contributes ``size / ranks``). Rows of 0 bytes (no-ops) are skipped.

Every file may start with a ``# source: ...`` line (the fixtures do) which is kept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.errors import ConfigError

# File-name tokens (nccl-tests binary names and common spellings) -> collective kind.
COLLECTIVES = {
    "all_reduce": "allreduce", "allreduce": "allreduce",
    "all_gather": "allgather", "allgather": "allgather",
    "reduce_scatter": "reducescatter", "reducescatter": "reducescatter",
    "alltoall": "alltoall", "all_to_all": "alltoall",
    "broadcast": "broadcast", "sendrecv": "sendrecv",
}

_RANK = re.compile(r"^#\s+Rank\s+(\d+)\s+Group\s+\d+\s+Pid\s+(\d+)\s+on\s+(\S+)\s+device\s+(\d+)\s+\[[^\]]*\]\s*(.*)$")
_NGPUS = re.compile(r"\bnGpus\s+(\d+)")


@dataclass(frozen=True)
class NcclLog:
    """One nccl-tests table: the run's shape and its per-size times (us)."""

    name: str                    # file stem
    collective: str              # allreduce | allgather | ...
    ranks: int
    nodes: int                   # distinct hosts in the ``#  Rank`` lines
    gpus_per_process: int        # ``nGpus`` of the header (GPUs one process/thread drives)
    device: str                  # GPU name of rank 0 (e.g. "NVIDIA H100 80GB HBM3")
    bytes: np.ndarray            # message size column (B), rows of 0 B dropped
    out_of_place_us: np.ndarray
    in_place_us: np.ndarray
    source: str | None = None    # the ``# source:`` line, without the prefix

    @property
    def ranks_per_node(self) -> int:
        return self.ranks // self.nodes

    @property
    def time_us(self) -> np.ndarray:
        """Per-row time used for fitting: the smaller of out-of-place and in-place.

        Warm-up outliers (e.g. the first out-of-place row of the NVIDIA/nccl-tests#309 tables,
        68 us against 24.7 in place) only ever make a run slower, so the minimum of the two
        measurements of the same size is the better estimate of the steady-state time.
        """
        return np.minimum(self.out_of_place_us, self.in_place_us)


def collective_from_name(name: str) -> str | None:
    """The collective named in a file name (``..._allreduce_...``, ``all_gather_perf``), if any."""
    stem = name.lower()
    for token in sorted(COLLECTIVES, key=len, reverse=True):
        if token in stem:
            return COLLECTIVES[token]
    return None


def looks_like_nccl_tests(path: str | Path) -> bool:
    """Whether the file's header reads like nccl-tests output (used to auto-detect the format)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return bool(_NGPUS.search(head)) or "out-of-place" in head or bool(re.search(r"^#\s+Rank\s+\d+", head, re.MULTILINE))


def _row_values(fields: list[str]) -> tuple[float, float, float]:
    size = int(fields[0])
    int(fields[1])
    oop, ip = float(fields[-8]), float(fields[-4])
    if size < 0 or not (np.isfinite(oop) and np.isfinite(ip)) or oop <= 0 or ip <= 0:
        raise ValueError("negative size or non-positive time")
    return size, oop, ip


def parse_nccl_log(path: str | Path, collective: str | None = None) -> NcclLog:
    """Read one nccl-tests text log; malformed rows raise a one-line ConfigError naming the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read nccl-tests log {str(path)!r}: {exc.strerror or exc}") from None
    kind = collective or collective_from_name(path.name)
    if kind is None:
        raise ConfigError(f"{path.name}: cannot tell the collective from the file name; "
                          f"pass collective=allreduce|allgather|... (one of {sorted(set(COLLECTIVES.values()))})")
    if kind not in set(COLLECTIVES.values()):
        raise ConfigError(f"collective={kind!r} is not one of {sorted(set(COLLECTIVES.values()))}")
    source, ngpus = None, None
    ranks: dict[int, tuple[str, str, str]] = {}
    rows: list[tuple[float, float, float]] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if source is None and line.lower().startswith("# source:"):
                source = line.split(":", 1)[1].strip()
            m = _RANK.match(line)
            if m:
                ranks[int(m.group(1))] = (m.group(2), m.group(3), m.group(5).strip())
            m = _NGPUS.search(line)
            if m and ngpus is None:
                ngpus = int(m.group(1))
            continue
        fields = line.split()
        try:
            if len(fields) < 10:
                raise ValueError("too few columns")
            size, oop, ip = _row_values(fields)
        except ValueError:
            raise ConfigError(f"{path.name} line {lineno}: expected a data row 'size count type redop [root] "
                              f"time algbw busbw #wrong time algbw busbw #wrong' (numbers), got {line[:60]!r}") from None
        if size > 0:
            rows.append((size, oop, ip))
    if not rows:
        raise ConfigError(f"{path.name}: no data rows of nccl-tests output (size count type ... time algbw busbw)")
    if not ranks:
        raise ConfigError(f"{path.name}: no '#  Rank N Group G Pid P on HOST device D' lines; cannot tell ranks and nodes")
    hosts = {h for _, h, _ in ranks.values()}
    pids: dict[tuple[str, str], int] = {}
    for pid, host, _ in ranks.values():
        pids[(host, pid)] = pids.get((host, pid), 0) + 1
    per_process = ngpus if ngpus is not None else max(pids.values())
    data = np.array(rows, dtype=np.float64)
    return NcclLog(name=path.stem, collective=kind, ranks=len(ranks), nodes=len(hosts),
                   gpus_per_process=int(per_process), device=ranks[min(ranks)][2],
                   bytes=data[:, 0], out_of_place_us=data[:, 1], in_place_us=data[:, 2], source=source)
