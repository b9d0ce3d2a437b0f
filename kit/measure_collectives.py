#!/usr/bin/env python3
"""Measure all_reduce / all_gather with torch.distributed; print an nccl-tests style table.

Standalone: needs only PyTorch and the Python standard library. Launch one process per GPU::

    torchrun --nproc-per-node 8 kit/measure_collectives.py --op all_reduce --out allreduce.txt
    torchrun --nproc-per-node 8 kit/measure_collectives.py --op all_gather --out allgather.txt
    # CPU / gloo, e.g. to try the kit without GPUs:
    torchrun --nproc-per-node 2 kit/measure_collectives.py --device cpu --max-bytes 1M

Backend: NCCL when running on CUDA (each process uses GPU ``LOCAL_RANK``), gloo on CPU.
Multi-node works the same way (torchrun ``--nnodes/--rdzv-endpoint``).

What is measured, per message size (``--min-bytes`` to ``--max-bytes``, times ``--factor``):
    all_reduce (sum)
        in-place      ``dist.all_reduce(buf)`` (the natural torch.distributed operation).
        out-of-place  ``out.copy_(inp); dist.all_reduce(out)``: torch.distributed has no
                      out-of-place all_reduce, so the time includes one local device copy of
                      the message (nccl-tests' out-of-place uses separate send/receive buffers).
    all_gather
        out-of-place  ``dist.all_gather_into_tensor(out, inp)`` with a separate input buffer.
        in-place      the input is this rank's slice of the output buffer (as in nccl-tests).
        ``size`` is the total gathered bytes (ranks x per-rank bytes), as in nccl-tests.

Timing (as nccl-tests does it): ``--warmup`` untimed operations, then a barrier and a
device synchronize, then ``--iters`` operations launched back to back, then a synchronize;
time = elapsed wall time (``time.perf_counter``) / iters, averaged over ranks. algbw =
size / time; busbw = algbw * 2(n-1)/n for all_reduce and algbw * (n-1)/n for all_gather.
Validation (``#wrong``): after timing, each buffer is refilled with rank-dependent values,
one operation is run, and the number of elements differing from the exact result is
counted (reported summed over ranks); ``--no-check`` prints N/A instead.

Output (rank 0 only, to stdout or ``--out``): the text format of NVIDIA nccl-tests
(``all_reduce_perf``), preceded by one ``# source: ...`` line, readable by
``python -m sim.calibrate data=FILE format=nccl-tests``.

Note: this launches one process per GPU (``nGpus 1`` in the header). nccl-tests run as a
single process driving all GPUs (``-g 8``) shows larger small-message times (about 35-40 us
instead of about 20 us on 8 A100/H100), so compare like with like. torch.distributed also
adds a few microseconds of Python and dispatcher overhead per operation over nccl-tests.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import socket
import sys
import time
from typing import Any, Callable

try:
    import torch
    import torch.distributed as dist
except ImportError:  # pragma: no cover - reported as a one-line error in main()
    torch = None  # type: ignore[assignment]
    dist = None  # type: ignore[assignment]

DTYPES = {"float": "float32", "half": "float16", "bfloat16": "bfloat16", "double": "float64", "int32": "int32"}
UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}


class UsageError(Exception):
    pass


def parse_bytes(flag: str, text: str) -> int:
    """``8``, ``64K``, ``1M``, ``1G`` (binary units) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?B?)\s*", text, flags=re.IGNORECASE)
    if not m:
        raise UsageError(f"{flag}: {text!r} is not a size (examples: 8, 64K, 1M, 1G)")
    return int(m.group(1)) * UNITS[m.group(2).upper()]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is reported on one line (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="all_reduce / all_gather bandwidth in nccl-tests format "
                                            "(launch with torchrun, one process per GPU)")
    p.add_argument("--op", default="all_reduce", choices=["all_reduce", "all_gather"])
    p.add_argument("--min-bytes", "-b", default="8", help="smallest message (default 8)")
    p.add_argument("--max-bytes", "-e", default="1G", help="largest message (default 1G; use e.g. 8G on H100)")
    p.add_argument("--factor", "-f", default="2", help="size multiplier between rows (default 2)")
    p.add_argument("--iters", "-n", default="20", help="timed operations per size (default 20)")
    p.add_argument("--warmup", "-w", default="5", help="untimed operations per size (default 5)")
    p.add_argument("--dtype", default="float", choices=sorted(DTYPES), help="element type (default float)")
    p.add_argument("--device", default=None, help="cuda or cpu (default cuda if available)")
    p.add_argument("--backend", default=None, help="override torch.distributed backend (default nccl on cuda, gloo on cpu)")
    p.add_argument("--no-check", action="store_true", help="skip validation (#wrong prints N/A)")
    p.add_argument("--out", default=None, help="write the table here (default stdout)")
    return p


def _int(flag: str, text: str, minimum: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not an integer") from None
    if v < minimum:
        raise UsageError(f"{flag}: {v} must be >= {minimum}")
    return v


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        if torch is None:
            raise UsageError("PyTorch is not installed (pip install torch)")
        a.min_bytes = parse_bytes("--min-bytes", a.min_bytes)
        a.max_bytes = parse_bytes("--max-bytes", a.max_bytes)
        if a.min_bytes < 1:
            raise UsageError("--min-bytes: must be >= 1")
        if a.max_bytes < a.min_bytes:
            raise UsageError(f"--max-bytes: {a.max_bytes} is smaller than --min-bytes {a.min_bytes}")
        a.factor = _int("--factor", a.factor, 2)
        a.iters = _int("--iters", a.iters, 1)
        a.warmup = _int("--warmup", a.warmup, 0)
        if a.device is None:
            a.device = "cuda" if torch.cuda.is_available() else "cpu"
        if a.device not in ("cuda", "cpu"):
            raise UsageError(f"--device: {a.device!r} must be cuda or cpu (the GPU is LOCAL_RANK)")
        if a.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device: CUDA is not available; use --device cpu")
        a.backend = a.backend or ("nccl" if a.device == "cuda" else "gloo")
        a.torch_dtype = getattr(torch, DTYPES[a.dtype])
    except UsageError as exc:
        parser.error(str(exc))
    return a


def sizes(a: argparse.Namespace) -> list[int]:
    out, s = [], a.min_bytes
    while s <= a.max_bytes:
        out.append(s)
        s *= a.factor
    return out


def format_time(us: float) -> str:
    """nccl-tests' time column: 7 characters, fewer decimals for long times."""
    if us >= 10000.0:
        return f"{us:7.0f}"
    if us >= 100.0:
        return f"{us:7.1f}"
    return f"{us:7.2f}"


def format_row(size: int, count: int, type_name: str, redop: str,
               results: list[tuple[float, float, float, str]]) -> str:
    """One data row; ``results`` is (time_us, algbw, busbw, wrong) for out-of-place, in-place."""
    line = f"{size:12d}  {count:12d}  {type_name:>8s}  {redop:>6s}  {-1:6d}"
    for t, alg, bus, wrong in results:
        line += f"  {format_time(t)}  {alg:6.2f}  {bus:6.2f}  {wrong:>6s}"
    return line


HEADER_COLUMNS = [
    "#                                                              out-of-place                       in-place          ",
    "#       size         count      type   redop    root     time   algbw   busbw  #wrong     time   algbw   busbw  #wrong ",
    "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)             (us)  (GB/s)  (GB/s)         ",
]


def bus_factor(op: str, n: int) -> float:
    return 2.0 * (n - 1) / n if op == "all_reduce" else (n - 1) / n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _all_gather_fn() -> Callable[..., Any]:
    """``dist.all_gather_into_tensor`` if the backend supports it, else a list-based all_gather."""
    def via_list(out: torch.Tensor, inp: torch.Tensor) -> None:
        n = dist.get_world_size()
        chunks = list(out.chunk(n))
        dist.all_gather(chunks, inp)

    return getattr(dist, "all_gather_into_tensor", None) or via_list


class Bench:
    """Buffers and operations for one message size on this rank."""

    def __init__(self, a: argparse.Namespace, device: torch.device, size: int):
        self.a, self.device = a, device
        self.n, self.rank = dist.get_world_size(), dist.get_rank()
        es = torch.empty((), dtype=a.torch_dtype).element_size()
        if a.op == "all_reduce":
            self.count = size // es
            self.size = self.count * es
            self.inp = torch.zeros(self.count, dtype=a.torch_dtype, device=device)
            self.out = torch.zeros_like(self.inp)
        else:
            self.count = size // (es * self.n)  # elements per rank, as nccl-tests prints it
            self.size = self.count * es * self.n
            self.out = torch.zeros(self.count * self.n, dtype=a.torch_dtype, device=device)
            self.inp = torch.zeros(self.count, dtype=a.torch_dtype, device=device)
        self.gather = _all_gather_fn()

    def op(self, in_place: bool) -> Callable[[], None]:
        if self.a.op == "all_reduce":
            if in_place:
                return lambda: dist.all_reduce(self.out)

            def oop() -> None:
                self.out.copy_(self.inp)
                dist.all_reduce(self.out)
            return oop
        mine = self.out[self.rank * self.count:(self.rank + 1) * self.count]
        if in_place:
            return lambda: self.gather(self.out, mine)
        return lambda: self.gather(self.out, self.inp)

    def time_us(self, in_place: bool) -> float:
        fn = self.op(in_place)
        for _ in range(self.a.warmup):
            fn()
        _sync(self.device)
        dist.barrier()
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(self.a.iters):
            fn()
        _sync(self.device)
        return (time.perf_counter() - t0) * 1e6 / self.a.iters

    def wrong(self, in_place: bool) -> int:
        """Elements of this rank's result that differ from the exact answer."""
        dt = self.a.torch_dtype
        value = float(self.rank % 7 + 1)  # small integers: sums are exact in every dtype
        if self.a.op == "all_reduce":
            self.inp.fill_(value)
            self.out.fill_(value if in_place else -1.0)
            self.op(in_place)()
            expect = float(sum(r % 7 + 1 for r in range(self.n)))
            bad = (self.out != torch.tensor(expect, dtype=dt, device=self.device)).sum()
        else:
            self.out.fill_(-1.0)
            if in_place:
                self.out[self.rank * self.count:(self.rank + 1) * self.count].fill_(value)
            else:
                self.inp.fill_(value)
            self.op(in_place)()
            expect = torch.arange(self.n, device=self.device).remainder(7).add(1).to(dt)
            bad = (self.out.view(self.n, self.count) != expect.unsqueeze(1)).sum()
        self.out.zero_()
        self.inp.zero_()
        return int(bad.item())


def device_line(rank: int, local: int, device: torch.device) -> str:
    """nccl-tests' ``#  Rank ... on HOST device N [BUSID] NAME`` line for this process."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        if hasattr(props, "pci_bus_id"):
            bus = f"{getattr(props, 'pci_domain_id', 0):04x}:{props.pci_bus_id:02x}:{getattr(props, 'pci_device_id', 0):02x}"
        else:
            bus = f"0x{local:02x}"
        dev_index = device.index if device.index is not None else local
    else:
        name, bus, dev_index = "cpu (gloo)", "0x00", local
    return (f"#  Rank {rank:2d} Group  0 Pid {os.getpid():6d} on {socket.gethostname():>10s} "
            f"device {dev_index:2d} [{bus}] {name}")


def run(a: argparse.Namespace) -> list[str] | None:
    """Measure on every rank; return the table's lines on rank 0 (None elsewhere)."""
    rank, n = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if a.device == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    lines_all: list[Any] = [None] * n
    dist.all_gather_object(lines_all, device_line(rank, local, device))
    red_device = device if a.backend == "nccl" else torch.device("cpu")
    factor = bus_factor(a.op, n)
    type_name = a.dtype
    redop = "sum" if a.op == "all_reduce" else "none"
    rows: list[str] = []
    bus_sum, bus_rows, wrong_total = 0.0, 0, 0
    for size in sizes(a):
        bench = Bench(a, device, size)
        if bench.count == 0:  # smaller than one element (per rank): nothing to move
            continue
        results = []
        for in_place in (False, True):
            t = bench.time_us(in_place)
            wrong = 0 if a.no_check else bench.wrong(in_place)
            stats = torch.tensor([t, float(wrong)], dtype=torch.float64, device=red_device)
            dist.all_reduce(stats)
            t_avg, wrong_sum = float(stats[0]) / n, int(stats[1])
            alg = bench.size / (t_avg * 1e-6) / 1e9
            bus = alg * factor
            wrong_total += wrong_sum
            results.append((t_avg, alg, bus, "N/A" if a.no_check else str(wrong_sum)))
            if in_place:
                bus_sum += bus
                bus_rows += 1
        rows.append(format_row(bench.size, bench.count, type_name, redop, results))
        del bench
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if rank != 0:
        return None
    name = f"{a.op}_perf"
    backend_version = a.backend
    if a.backend == "nccl":
        try:
            backend_version = "nccl " + ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception:  # noqa: BLE001
            pass
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"# source: measured with kit/measure_collectives.py on {date}, torch {torch.__version__}, "
        f"{backend_version}, {socket.gethostname()}; {n} ranks, one process per rank"
        f"{' (one GPU each)' if device.type == 'cuda' else ' (CPU)'}; "
        "all_reduce out-of-place = local copy + in-place all_reduce",
        f"# Collective test starting: {name}",
        f"# nThread 1 nGpus 1 minBytes {a.min_bytes} maxBytes {a.max_bytes} step: {a.factor}(factor) "
        f"warmup iters: {a.warmup} iters: {a.iters} agg iters: 1 validation: {0 if a.no_check else 1} graph: 0",
        "#",
        "# Using devices",
        *lines_all,
        "#",
        *HEADER_COLUMNS,
        *rows,
        f"# Out of bounds values : {wrong_total} {'OK' if wrong_total == 0 else 'FAILED'}",
        f"# Avg bus bandwidth    : {bus_sum / max(bus_rows, 1):g} ",
        "#",
        f"# Collective test concluded: {name}",
        "#",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if "RANK" not in os.environ:  # plain `python measure_collectives.py`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    if a.device == "cuda":  # bind this process to its GPU before NCCL initializes
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend=a.backend)
    try:
        lines = run(a)
    finally:
        dist.destroy_process_group()
    if lines is not None:
        text = "\n".join(lines) + "\n"
        if a.out:
            with open(a.out, "w") as f:
                f.write(text)
            print(f"wrote {a.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
