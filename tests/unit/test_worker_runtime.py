"""The worker's runtime settings: event loop, loop-lag watch, garbage collection, settings."""

from __future__ import annotations

import asyncio
import gc

import pytest
from prometheus_client import CollectorRegistry, Histogram

from service.adapters.event_loop import new_event_loop, uvloop_installed
from service.adapters.metrics import watch_loop_lag
from service.config import ConfigError, load_settings
from service.gc_settings import (
    THRESHOLDS,
    FreeMemoryTrim,
    freeze_startup_heap,
    tune_garbage_collector,
)


def test_event_loop_kind_is_the_one_asked_for() -> None:
    loop = new_event_loop("asyncio")
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    loop = new_event_loop("uvloop")
    try:
        assert type(loop).__module__.startswith("uvloop" if uvloop_installed() else "asyncio")
        # Loops made later through the policy (Faust's consumer thread) are of the same kind.
        other = asyncio.new_event_loop()
        assert type(other) is type(loop)
        other.close()
    finally:
        loop.close()
        new_event_loop("asyncio").close()  # leave asyncio's policy for the other tests


def test_uvloop_is_installed_with_the_service() -> None:
    assert uvloop_installed()


class ClockRanOut(Exception):
    pass


def test_loop_lag_records_how_long_the_loop_was_held() -> None:
    """Three wake-ups read on a scripted clock: on time, 0.25 s late (a piece of work held
    the loop), on time; then the clock ends the watcher."""
    lag = Histogram("lag_seconds", "", buckets=(0.01, 0.05, 0.1, 1), registry=CollectorRegistry())
    readings = iter([0.0, 0.01, 0.01, 0.27, 0.27, 0.28])

    def clock() -> float:
        try:
            return next(readings)
        except StopIteration:
            raise ClockRanOut from None

    async def scenario() -> None:
        await watch_loop_lag(lag, interval=0.01, clock=clock)

    with pytest.raises(ClockRanOut):
        asyncio.run(scenario())
    samples = {s.labels.get("le"): s.value for s in lag.collect()[0].samples
               if s.name.endswith("_bucket")}
    assert samples["+Inf"] == 3
    assert samples["0.01"] == 2  # the two on time
    assert samples["0.1"] == 2  # exactly one wake-up came 0.1 s late or more
    assert samples["1.0"] == 3
    total = next(s.value for s in lag.collect()[0].samples if s.name.endswith("_sum"))
    assert total == pytest.approx(0.25)


def test_gc_thresholds_and_frozen_start_up_heap() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        tune_garbage_collector()
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 1000  # the modules and objects alive at start-up
        gc.unfreeze()
        freeze_startup_heap()
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_policy_cache_event_loop_and_reads_settings() -> None:
    settings = load_settings({})
    assert (settings.policy_cache, settings.event_loop, settings.api_max_reads) == \
        (1.0, "uvloop", 32)
    settings = load_settings({"CX_POLICY_CACHE": "0", "CX_EVENT_LOOP": "asyncio",
                              "CX_API_MAX_READS": "1"})
    assert (settings.policy_cache, settings.event_loop, settings.api_max_reads) == \
        (0.0, "asyncio", 1)
    assert load_settings({"CX_POLICY_CACHE": "250ms"}).policy_cache == 0.25
    for name, value in (("CX_POLICY_CACHE", "61s"), ("CX_POLICY_CACHE", "-1s"),
                        ("CX_EVENT_LOOP", "trio"), ("CX_API_MAX_READS", "0"),
                        ("CX_API_MAX_READS", "64")):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value})


def test_free_memory_is_given_back_to_the_system_at_most_once_per_interval() -> None:
    """After a batch the worker trims glibc's free memory (this image's C library has
    malloc_trim), but not again within the interval: a trim walks the heap."""
    trim = FreeMemoryTrim(every=3600)
    trim()
    trim()
    assert trim.trims == 1
    every_time = FreeMemoryTrim(every=0)
    for _ in range(3):
        every_time()
    assert every_time.trims == 3
