"""Every fault scenario at full size (`make chaos`; skipped otherwise). Results are appended to
the file named by CX_CHAOS_RESULTS, one line per scenario, for docs/reliability.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos import scenarios
from tests.support.stack import Stack

SCALE = float(os.environ.get("CX_CHAOS_SCALE", "1"))  # e.g. 0.2 for a quicker pass


def n(events: int) -> int:
    return int(events * SCALE)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("CX_CHAOS") != "full",
                       reason="full-size fault scenarios run with `make chaos`"),
]


def test_1_kill_9_five_times(stack: Stack, tmp_path: Path) -> None:
    scenarios.kill_9(stack, tmp_path, events=n(200_000), kills=5)


def test_2_third_worker_joins_and_leaves_three_times(stack: Stack, tmp_path: Path) -> None:
    scenarios.rebalances(stack, tmp_path, events=n(60_000), joins=3)


def test_3_kafka_broker_restarted(stack: Stack, tmp_path: Path) -> None:
    scenarios.kafka_restart(stack, tmp_path, events=n(50_000))


def test_4_redis_killed_losing_the_last_second_twice(stack: Stack, tmp_path: Path) -> None:
    scenarios.redis_loss(stack, tmp_path, events=n(60_000), crashes=2)


def test_5_redis_slow(stack: Stack, tmp_path: Path) -> None:
    scenarios.redis_slow(stack, tmp_path, events=n(50_000), pauses=[2, 2, 12, 2])


def test_6_poison_flood(stack: Stack, tmp_path: Path) -> None:
    scenarios.poison_flood(stack, tmp_path, events=n(40_000), flood=10_000, oversized=40)


def test_7_an_hour_sent_again(stack: Stack, tmp_path: Path) -> None:
    scenarios.resend_hour(stack, tmp_path, events=n(50_000))


def test_8_events_beyond_the_allowed_lateness(stack: Stack, tmp_path: Path) -> None:
    scenarios.too_late(stack, tmp_path, events=n(30_000), late=2_000)


def test_9_hostile_data_spread_through_the_stream(stack: Stack, tmp_path: Path) -> None:
    scenarios.hostile_data(stack, tmp_path, events=n(200_000), share=0.01)
