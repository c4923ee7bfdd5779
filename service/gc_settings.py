"""Garbage-collector settings of a worker process.

A worker holds many small objects for a long time (customer states and what the engine derives
from them) and allocates millions of short-lived ones per batch (events, views, outputs), which
reference counting frees. With CPython's default thresholds (700, 10, 10) the collector ran
thousands of times per batch, walked the long-lived objects again each time it reached an older
generation (a quarter of the worker's CPU in the benchmark), and its full collections paused the
event loop 50 to 270 ms under load, with every batch and lookup waiting. Young collections now
run every 50,000 allocations and full ones far more rarely; what is alive once the worker has
started (modules, Faust's machinery; again at its first partition assignment) is frozen, never
walked again. Only reference cycles wait longer to be freed.

After a batch, the C allocator's free memory is given back to the system (`FreeMemoryTrim`):
glibc keeps what a batch freed (fetched records, encoded states and views) for reuse, so without
it the resident size follows the largest batch so far, not what the worker holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

THRESHOLDS = (50_000, 50, 100)


def tune_garbage_collector() -> None:
    gc.set_threshold(*THRESHOLDS)
    freeze_startup_heap()


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive to the permanent generation."""
    gc.collect()
    gc.freeze()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


class FreeMemoryTrim:
    """Gives the allocator's free memory back to the system, at most once per `every` seconds
    (a trim walks the heap: 20 ms after 200 MB was freed, microseconds when nothing was)."""

    def __init__(self, every: float = 1.0) -> None:
        self._trim = _malloc_trim()
        self._every = every
        self._last = float("-inf")
        self.trims = 0

    def __call__(self) -> None:
        now = time.monotonic()
        if self._trim is None or now - self._last < self._every:
            return
        self._last = now
        self._trim(0)
        self.trims += 1
