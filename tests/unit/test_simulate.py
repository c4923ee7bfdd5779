"""`cx-stream simulate` never sends event times ahead of the present, at any speed."""

from __future__ import annotations

import orjson
import pytest

from service.domain.events import Rejection
from service.domain.validation import DoorLimits, check_record, validate_event
from service.tools.simulate import default_start, simulated_clock
from service.tools.traffic import TrafficModel

NOW = 1_764_000_000.0
WEEK = 7 * 86400.0


@pytest.mark.parametrize("speed", [0.5, 1.0, 60.0, 3600.0])
@pytest.mark.parametrize("duration", [None, 600.0])
def test_live_event_time_stays_at_or_before_the_present(speed: float,
                                                        duration: float | None) -> None:
    start = default_start(NOW, speed, duration, False, WEEK)
    assert start <= NOW
    for elapsed in (0.0, 1.0, 60.0, 599.0, 600.0, 86400.0):
        clock = simulated_clock(start, elapsed, speed, NOW + elapsed)
        assert clock <= NOW + elapsed
        assert clock >= start


def test_fast_live_traffic_reaches_the_present_then_follows_it() -> None:
    start = default_start(NOW, 60.0, None, False, WEEK)
    assert start == NOW - WEEK
    reached = WEEK / 59  # wall seconds until event time meets the wall clock
    assert simulated_clock(start, reached / 2, 60.0, NOW + reached / 2) < NOW + reached / 2
    later = reached + 3600
    assert simulated_clock(start, later, 60.0, NOW + later) == NOW + later


def test_a_timed_fast_run_ends_at_the_present() -> None:
    start = default_start(NOW, 3600.0, 600.0, False, WEEK)
    assert start + 600.0 * 3600.0 == pytest.approx(NOW + 600.0)


def test_a_file_ends_at_the_present() -> None:
    assert default_start(NOW, 3600.0, 600.0, True, WEEK) == NOW - 600.0 * 3600.0


def test_a_simulated_file_published_now_has_no_event_from_the_future() -> None:
    """A day of traffic ending now, each record stamped now: every valid event passes the
    door, and its key is the one the contract asks for."""
    start = default_start(NOW, 86400.0, 1.0, True, WEEK)
    model = TrafficModel(start=start, contacts_per_second=0.05, customers=200, seed=11,
                         duplicate_share=0.0, malformed_share=0.0)
    checked = 0
    for msg in model.advance(NOW):
        event = validate_event(msg.kind, orjson.loads(msg.value))
        assert not isinstance(event, Rejection), event
        assert check_record(event, msg.key, int(NOW * 1000), DoorLimits()) is None
        checked += 1
    assert checked > 1000


def test_catching_up_goes_an_hour_at_a_time_then_follows_the_present() -> None:
    from service.tools.simulate import CATCH_UP_STEP, catch_up_clock

    clock, steps = NOW - 2 * WEEK, 0
    while clock < NOW:
        later = catch_up_clock(clock, NOW)
        assert clock < later <= clock + CATCH_UP_STEP
        assert later <= NOW
        clock, steps = later, steps + 1
    assert steps == 2 * WEEK / CATCH_UP_STEP
    assert catch_up_clock(clock, NOW + 5) == NOW + 5  # then real time
