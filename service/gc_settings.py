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
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 50, 100)


def tune_garbage_collector() -> None:
    gc.set_threshold(*THRESHOLDS)
    freeze_startup_heap()


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive to the permanent generation."""
    gc.collect()
    gc.freeze()
