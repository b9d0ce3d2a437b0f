"""How the process runs a simulation or a search: the cyclic garbage collector's pace and
the C heap's free pages. Process-wide settings, changed only for the duration of a ``with``
block or at a point where nothing is lost by them."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from contextlib import contextmanager


@contextmanager
def fewer_collections(gen0_objects: int = 20000):
    """Run the block with the cyclic garbage collector's youngest generation collected every
    ``gen0_objects`` allocations instead of 700: the event loop and the frontier's search
    allocate many short-lived objects that reference counting frees, and collecting that
    often costs ~4 % of a run and ~17 % of the frontier search. The previous thresholds are
    restored afterwards."""
    previous = gc.get_threshold()
    gc.set_threshold(gen0_objects, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_large_blocks_mapped(threshold_bytes: int = 128 * 1024) -> None:
    """Fix glibc's ``M_MMAP_THRESHOLD`` at its default of 128 KiB (a no-op elsewhere). glibc
    serves larger blocks with mappings of their own, given back to the system when freed, but
    raises the threshold each time such a block is freed (up to 32 MiB); after that the
    recorders' half-megabyte column buffers and numpy's temporaries come from the heap, where
    long-lived small objects between them keep the pages: a 1,000,000-request run then peaks
    ~45 MB higher. Setting the threshold turns that adjustment off. Process-wide; called by
    the command-line entry."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(-3, threshold_bytes)                  # M_MMAP_THRESHOLD


def return_free_memory() -> None:
    """Hand the C heap's free pages back to the operating system (glibc ``malloc_trim``; a
    no-op elsewhere). Building a large trace leaves tens of megabytes of freed temporaries
    that glibc would otherwise keep for the whole run."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
